package appleid

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/xapsd/xapsd/internal/applecerts"
	"github.com/xapsd/xapsd/internal/atomicfile"
)

// The state folder holds the certificates (applecerts), and beside them,
// all mode 0600 in a 0700 folder:
//
//	request-keys.pem           the keys of the request in flight, written
//	                           before it is sent
//	attempts.json              when the last /new and /renew were sent and
//	                           how they ended, written before sending
//	answer.http                the raw bytes of the last answer, written
//	                           before it is parsed
//
// Every write goes through atomicfile, so a crash leaves the old or the
// new file, never a torn one.
const (
	attemptsFile    = "attempts.json"
	requestKeysFile = "request-keys.pem"
	answerFile      = "answer.http"
	fileMode        = applecerts.FileMode
)

type store struct{ dir string }

// certs is the folder's certificates.
func (s store) certs() applecerts.Folder { return applecerts.In(s.dir) }

// ensure creates the folder, and tightens its mode if it exists: it holds
// private keys.
func (s store) ensure() error { return s.certs().Ensure() }

func (s store) path(name string) string { return filepath.Join(s.dir, name) }

func (s store) servicePath(svc service) string { return s.certs().Path(svc) }

// load returns the stored certificate of a service, or an error that
// wraps fs.ErrNotExist when there is none.
func (s store) load(svc service) (*applecerts.Held, error) { return s.certs().Load(svc) }

// save stores a certificate and its key as one file.
func (s store) save(svc service, cert *x509.Certificate, key *rsa.PrivateKey) error {
	return s.certs().Save(svc, cert, key)
}

// saveRequestKeys records the keys of a request before it is sent, so a
// certificate in an answer that is only found later (answer.http) still
// has its key.
func (s store) saveRequestKeys(keys [len(services)]*rsa.PrivateKey) error {
	var data []byte
	for i, k := range keys {
		data = append(data, pem.EncodeToMemory(&pem.Block{
			Type:    "RSA PRIVATE KEY",
			Headers: map[string]string{"CertRequestNo": strconv.Itoa(i), "Service": services[i].Name},
			Bytes:   x509.MarshalPKCS1PrivateKey(k),
		})...)
	}
	if err := atomicfile.WriteFile(s.path(requestKeysFile), data, fileMode); err != nil {
		return fmt.Errorf("store request keys: %w", err)
	}
	return nil
}

func (s store) loadRequestKeys() (map[int]*rsa.PrivateKey, error) {
	p := s.path(requestKeysFile)
	data, err := readState(p)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	keys := map[int]*rsa.PrivateKey{}
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		no, err := strconv.Atoi(b.Headers["CertRequestNo"])
		if err != nil || no < 0 || no >= len(services) {
			continue
		}
		k, err := applecerts.ParseRSAKey(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: key %d: %w", p, no, err)
		}
		keys[no] = k
	}
	return keys, nil
}

// remove deletes a file of the folder; a missing one is fine.
func (s store) remove(name string) error {
	if err := os.Remove(s.path(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// attempt is one request to the certificate service.
type attempt struct {
	Time time.Time `json:"time"`
	// Outcome is "sent" from just before the request goes out until its
	// answer has been handled, then "ok" or the error.
	Outcome string `json:"outcome"`
	// Failures counts renewals that failed in a row, this one included
	// while it is in flight: a crash mid-request counts as a failure.
	Failures int `json:"failures,omitempty"`
}

// attempts is the content of attempts.json.
type attempts struct {
	New   *attempt `json:"new,omitempty"`
	Renew *attempt `json:"renew,omitempty"`
}

const outcomeSent = "sent"

// readAttempts returns the record. A record that cannot be read is taken
// as a failed request of either kind sent when the file was last written
// (or now, if even that is unknown): erring towards not asking Apple is
// what keeps a broken disk from turning into a request storm, and the
// file's time keeps it from blocking requests for ever.
func (s store) readAttempts(now time.Time) (attempts, error) {
	p := s.path(attemptsFile)
	data, err := readState(p)
	if errors.Is(err, fs.ErrNotExist) {
		return attempts{}, nil
	}
	var a attempts
	if err == nil {
		err = json.Unmarshal(data, &a)
	}
	if err != nil {
		when := now
		if fi, serr := os.Stat(p); serr == nil && fi.ModTime().Before(now) {
			when = fi.ModTime()
		}
		guess := &attempt{Time: when, Outcome: "unknown: attempt record unreadable", Failures: 1}
		return attempts{New: guess, Renew: guess}, fmt.Errorf("read %s: %w", s.path(attemptsFile), err)
	}
	return a, nil
}

func (s store) writeAttempts(a attempts) error {
	data, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(s.path(attemptsFile), append(data, '\n'), fileMode); err != nil {
		return fmt.Errorf("record request attempt: %w", err)
	}
	return nil
}
