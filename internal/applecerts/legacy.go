package applecerts

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/xapsd/xapsd/internal/creds"
)

// ImportResult says what ImportLegacy did.
type ImportResult struct {
	// Mail is true when the mail certificate, the one pushes use, was
	// stored from the old database.
	Mail bool
	// Stored lists the Services whose certificate was stored.
	Stored []string
	// Notes explains each certificate that was not stored (expired,
	// already stored, unreadable), for the log.
	Notes []string
}

// legacyCerts is the old daemon's "AppleCerts" object (docs/protocol.md#legacy-applecerts): Go's
// JSON of five tls.Certificate values and five PKCS#1 keys, in
// CertRequestNo order. encoding/json turns the base64 strings into bytes.
type legacyCerts struct {
	Signature []*struct {
		Certificate [][]byte
	}
	Keys [][]byte
}

// ImportLegacy stores the certificates of an old xapsd's database.json in
// the folder dir, so an upgraded install keeps its valid certificate
// without asking Apple. It is safe to call at every start: a certificate is
// only stored when dir has none for that service or has one that ends
// earlier. Expired certificates are skipped with a note, not an error. An
// unreadable mail entry is an error, because the mail certificate is the
// one that matters; problems with the other four are notes.
func ImportLegacy(appleCerts json.RawMessage, dir string, now time.Time) (ImportResult, error) {
	var res ImportResult
	trimmed := bytes.TrimSpace(appleCerts)
	if len(trimmed) == 0 || bytes.Equal(trimmed, []byte("null")) {
		return res, nil
	}
	var lc legacyCerts
	if err := json.Unmarshal(trimmed, &lc); err != nil {
		return res, fmt.Errorf("old database AppleCerts: %w", err)
	}
	st := In(dir)
	ensured := false
	for _, svc := range Services {
		cert, key, err := lc.entry(svc.No)
		if err != nil {
			if svc.No == MailNo {
				return res, fmt.Errorf("old database AppleCerts: mail certificate: %w", err)
			}
			res.Notes = append(res.Notes, fmt.Sprintf("%s certificate not imported: %v", svc.Name, err))
			continue
		}
		if cert == nil {
			continue
		}
		ends := cert.NotAfter.UTC().Format(time.RFC3339)
		if !now.Before(cert.NotAfter) {
			res.Notes = append(res.Notes, fmt.Sprintf("%s certificate of the old database not imported: it expired on %s", svc.Name, ends))
			continue
		}
		if svc.No == MailNo {
			if _, err := creds.TopicFromCertificate(cert); err != nil {
				return res, fmt.Errorf("old database AppleCerts: mail certificate: %w", err)
			}
		}
		cur, err := st.Load(svc)
		switch {
		case err == nil && !cur.Cert.NotAfter.Before(cert.NotAfter):
			res.Notes = append(res.Notes, fmt.Sprintf("%s certificate of the old database not imported: %s already holds one valid until %s",
				svc.Name, st.Path(svc), cur.Cert.NotAfter.UTC().Format(time.RFC3339)))
			continue
		case err != nil && !errors.Is(err, fs.ErrNotExist):
			// A broken file is replaced by a working certificate.
			res.Notes = append(res.Notes, fmt.Sprintf("replacing unreadable %s: %v", st.Path(svc), err))
		}
		if !ensured {
			if err := st.Ensure(); err != nil {
				return res, err
			}
			ensured = true
		}
		if err := st.Save(svc, cert, key); err != nil {
			return res, err
		}
		res.Stored = append(res.Stored, svc.Name)
		if svc.No == MailNo {
			res.Mail = true
		}
	}
	return res, nil
}

// entry returns certificate and key number no, or nil, nil when the old
// database has none there.
func (lc *legacyCerts) entry(no int) (*x509.Certificate, *rsa.PrivateKey, error) {
	if no >= len(lc.Signature) || lc.Signature[no] == nil || len(lc.Signature[no].Certificate) == 0 {
		return nil, nil, nil
	}
	cert, err := x509.ParseCertificate(lc.Signature[no].Certificate[0])
	if err != nil {
		return nil, nil, err
	}
	if no >= len(lc.Keys) || len(lc.Keys[no]) == 0 {
		return nil, nil, errors.New("the old database holds no key for it")
	}
	key, err := ParseRSAKey(lc.Keys[no])
	if err != nil {
		return nil, nil, fmt.Errorf("key: %w", err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, nil, errors.New("its key does not belong to it")
	}
	return cert, key, nil
}
