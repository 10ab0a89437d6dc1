// Package applecerts keeps the Apple push certificates in the state
// folder (statedir.Dir.AppleCerts, apple-push/): one file per Apple
// service, the certificate followed by its RSA key, written crash-safely,
// and imports the old daemon's certificates from its database.json
// (ImportLegacy). The Apple ID client (internal/appleid) gets and renews
// them; the daemon imports the old ones at start; pushes use the mail
// certificate, which loads like any PEM credential (internal/creds).
//
// The folder holds, all mode 0600 in a 0700 folder:
//
//	mail.pem, calendar.pem, …  one per service: the certificate, then its
//	                           RSA key (PKCS#1), so a crash never pairs a
//	                           certificate with the wrong key
//
// and the Apple ID client's own working files beside them.
package applecerts

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/xapsd/xapsd/internal/atomicfile"
	"github.com/xapsd/xapsd/internal/regularfile"
)

// Service is one of the five push certificates macOS Server asks for in
// a single request (docs/protocol.md#apple-cert-services). Only the mail
// one is used; the others are requested because the service expects all
// five, and kept so a renewal can send all five again.
type Service struct {
	No          int    // CertRequestNo, also the index in the old AppleCerts arrays
	Name        string // file name in the folder, without .pem
	CommonName  string // CSR subject CN
	Apns        string // Description suffix after "apns:"
	ServiceType string
}

// Services is the table of docs/protocol.md#apple-cert-services, in CertRequestNo order.
var Services = [5]Service{
	{0, "calendar", "com.apple.servermgrd.apns.calendar", "com.apple.calendar", "Service_Calendar"},
	{1, "contact", "com.apple.servermgrd.apns.contact", "com.apple.contact", "Service_Contact"},
	{2, "mail", "com.apple.servermgrd.apns.mail", "com.apple.mail", "Service_Mail"},
	{3, "mgmt", "com.apple.servermgrd.apns.mgmt", "com.apple.mgmt", "Service_Mgmt"},
	{4, "alerts", "com.apple.server.apns.alerts", "com.apple.alerts", "Service_Alerts"},
}

// MailNo is the CertRequestNo of the certificate xapsd pushes with.
const MailNo = 2

// File and folder modes: the files hold private keys.
const (
	FileMode = 0o600
	DirMode  = 0o700
)

// maxFile caps what is read of a certificate file; real ones are a few
// kilobytes.
const maxFile = 1 << 20

// Held is a stored certificate with its key.
type Held struct {
	Cert *x509.Certificate
	Key  *rsa.PrivateKey
}

// Folder is the folder of the certificates.
type Folder struct{ dir string }

// In is the folder dir (statedir.Dir.AppleCerts).
func In(dir string) Folder { return Folder{dir: dir} }

// Dir is the folder's path.
func (f Folder) Dir() string { return f.dir }

// Path is the file of svc's certificate.
func (f Folder) Path(svc Service) string { return filepath.Join(f.dir, svc.Name+".pem") }

// Mail is the file of the certificate pushes use.
func (f Folder) Mail() string { return f.Path(Services[MailNo]) }

// Ensure creates the folder, and tightens its mode if it exists: it holds
// private keys.
func (f Folder) Ensure() error {
	if err := os.MkdirAll(f.dir, DirMode); err != nil {
		return fmt.Errorf("create state folder %s: %w", f.dir, err)
	}
	if err := os.Chmod(f.dir, DirMode); err != nil {
		return fmt.Errorf("state folder %s: %w", f.dir, err)
	}
	return nil
}

// Load returns the stored certificate of svc, or an error that wraps
// fs.ErrNotExist when there is none.
func (f Folder) Load(svc Service) (*Held, error) {
	p := f.Path(svc)
	data, err := ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	var h Held
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch {
		case b.Type == "CERTIFICATE" && h.Cert == nil:
			if h.Cert, err = x509.ParseCertificate(b.Bytes); err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
		case b.Type == "RSA PRIVATE KEY" && h.Key == nil, b.Type == "PRIVATE KEY" && h.Key == nil:
			if h.Key, err = ParseRSAKey(b.Bytes); err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
		}
	}
	switch {
	case h.Cert == nil:
		return nil, fmt.Errorf("%s: no certificate", p)
	case h.Key == nil:
		return nil, fmt.Errorf("%s: no private key", p)
	case !h.Key.PublicKey.Equal(h.Cert.PublicKey):
		return nil, fmt.Errorf("%s: the private key does not belong to the certificate", p)
	}
	return &h, nil
}

// Save stores a certificate and its key as one file.
func (f Folder) Save(svc Service, cert *x509.Certificate, key *rsa.PrivateKey) error {
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	data = append(data, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})...)
	if err := atomicfile.WriteFile(f.Path(svc), data, FileMode); err != nil {
		return fmt.Errorf("store %s certificate: %w", svc.Name, err)
	}
	return nil
}

// ParseRSAKey accepts PKCS#1 and PKCS#8, whatever the PEM label says.
func ParseRSAKey(der []byte) (*rsa.PrivateKey, error) {
	if k, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, errors.New("not a PKCS#1 or PKCS#8 private key")
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("a %T, not an RSA key", k)
	}
	return rk, nil
}

// ReadFile reads a file of the folder, never through a symbolic link
// (whoever could plant one there could otherwise have xapsd read any file
// it can reach) and never more than a certificate file can hold.
func ReadFile(path string) ([]byte, error) {
	data, err := regularfile.ReadFile(path, syscall.O_NOFOLLOW, maxFile)
	if errors.Is(err, regularfile.ErrTooLarge) {
		return nil, fmt.Errorf("larger than %d bytes", maxFile)
	}
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			// The caller names the path already.
			return nil, pe.Err
		}
		return nil, err
	}
	return data, nil
}
