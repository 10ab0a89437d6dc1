// Package creds loads the credential xapsd pushes to APNs with: a push
// certificate (PKCS#12, or PEM certificate and key) or an APNs auth key
// (.p8) for token authentication.
//
// Load checks everything that can be checked without talking to Apple, so
// a bad file stops the daemon at start (or a reload keeps the old
// credential) with a message naming the file and the problem, instead of
// every push failing later. Problems that still let pushes work, such as
// a certificate close to expiry, come back as warnings. No error or
// warning ever contains key material or a password.
package creds

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/sideshow/apns2/token"

	"github.com/xapsd/xapsd/internal/regularfile"
)

// Mode is how xapsd authenticates to APNs.
type Mode int

const (
	// ModeCertificate is TLS client-certificate authentication.
	ModeCertificate Mode = iota + 1
	// ModeToken is a JWT bearer token signed with a .p8 auth key.
	ModeToken
)

func (m Mode) String() string {
	switch m {
	case ModeCertificate:
		return "certificate"
	case ModeToken:
		return "token"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Files names the configured credential files. Paths are absolute: the
// config package resolves them.
type Files struct {
	P12         string
	P12Password string // the password itself, not a file
	PEMCert     string
	PEMKey      string // empty: the key is in PEMCert
	P8          string
	KeyID       string
	TeamID      string
	Topic       string // token mode only; certificates carry their topic
}

// Configured reports whether any credential file is set. KeyID, TeamID
// and Topic alone are not a credential: without a .p8 there is nothing to
// sign with.
func (f Files) Configured() bool {
	return f.P12 != "" || f.PEMCert != "" || f.PEMKey != "" || f.P8 != ""
}

// Credential is a loaded, checked push credential.
type Credential struct {
	Mode        Mode
	Topic       string           // UID of the certificate subject, or Files.Topic in token mode
	Certificate *tls.Certificate // certificate mode; Leaf is set
	Token       *token.Token     // token mode; a first bearer is already signed
	NotAfter    time.Time        // certificate expiry; zero in token mode
	Sources     []string         // the files it came from, for messages
	// Environments are the APNs environments Apple marked the
	// certificate for (see Environments); empty in token mode and for
	// unmarked certificates.
	Environments []string
	// Warnings are problems that do not stop pushes from working today.
	Warnings []string
	// ExpiryWarning is set when the certificate ends within 30 days. It
	// is apart from Warnings because a running daemon repeats it on its
	// own schedule (30, 14, 7, 1 days) and must not say it twice.
	ExpiryWarning string
}

// CheckEnvironment says whether the credential can push to the APNs
// environment env (EnvDevelopment or EnvProduction): a certificate that
// Apple marked for the other environment only is refused by APNs on every
// push (403 BadCertificateEnvironment). A token, an unmarked certificate
// or another env (a test server) passes.
func (c *Credential) CheckEnvironment(env string) error {
	if len(c.Environments) == 0 || (env != EnvDevelopment && env != EnvProduction) {
		return nil
	}
	for _, e := range c.Environments {
		if e == env {
			return nil
		}
	}
	file := ""
	if len(c.Sources) > 0 {
		file = c.Sources[0] + " "
	}
	return fmt.Errorf("%w: certificate %s(topic %s) is for APNs %s only, but apnsEndpoint is %s; APNs would refuse every push "+
		"(BadCertificateEnvironment): use a certificate for %s, or set apnsEndpoint: %s",
		ErrWrongEnvironment, file, c.Topic, c.Environments[0], env, env, c.Environments[0])
}

// Errors a caller or test may want to tell apart. Each is wrapped with the
// file it concerns.
var (
	ErrNotConfigured  = errors.New("no push credential file configured")
	ErrNoCertificate  = errors.New("no certificate found")
	ErrNoKey          = errors.New("no private key found")
	ErrKeyMismatch    = errors.New("private key does not belong to the certificate")
	ErrNoTopic        = errors.New("certificate subject has no UID attribute (the push topic)")
	ErrExpired        = errors.New("certificate has expired")
	ErrNotYetValid    = errors.New("certificate is not valid yet")
	ErrWrongPassword  = errors.New("wrong PKCS#12 password")
	ErrEncryptedKey   = errors.New("private key is encrypted")
	ErrBadAuthKey     = errors.New("not an APNs auth key (EC P-256 in PKCS#8)")
	ErrMissingSetting = errors.New("required setting missing")
	// ErrWrongEnvironment: the certificate is for the other APNs
	// environment.
	ErrWrongEnvironment = errors.New("push certificate for the wrong APNs environment")
)

// expiryWarning is how early a certificate's end is announced. Apple
// push certificates last a year, and renewing one takes a person.
const expiryWarning = 30 * 24 * time.Hour

// minTopicLen is the shortest topic the stock Dovecot plugin survives:
// it asserts that the /register reply body, which is the topic, is longer
// than 50 bytes, and a failed assertion kills the imap process
// (docs/protocol.md#topic-length).
const minTopicLen = 51

// maxFileSize caps what is read from a credential path. Real files are a
// few kilobytes; the cap keeps a mistyped path (a log, /dev/zero) from
// eating memory.
const maxFileSize = 1 << 20

// Load reads the credential in the order the original daemon chose it
// (docs/protocol.md#apns-credentials): PKCS#12 if set, else PEM certificate (and key), else .p8
// token. now decides validity and expiry warnings.
func Load(f Files, now time.Time) (*Credential, error) {
	switch {
	case f.P12 != "":
		return loadP12(f.P12, f.P12Password, now)
	case f.PEMCert != "":
		return loadPEM(f.PEMCert, f.PEMKey, now)
	case f.PEMKey != "":
		return nil, fmt.Errorf("private key %s is configured without a certificate file: %w", f.PEMKey, ErrNoCertificate)
	case f.P8 != "":
		return loadToken(f)
	}
	return nil, ErrNotConfigured
}

// readFile reads a credential file. The path is named once, by us; the
// *fs.PathError would repeat it.
func readFile(what, path string) ([]byte, error) {
	data, err := regularfile.ReadFile(path, 0, maxFileSize)
	if errors.Is(err, regularfile.ErrTooLarge) {
		return nil, fmt.Errorf("read %s %s: larger than %d bytes, not a credential file", what, path, maxFileSize)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s %s: %w", what, path, unwrapPath(err))
	}
	return data, nil
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
