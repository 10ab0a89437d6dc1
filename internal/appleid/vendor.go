package appleid

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/xapsd/xapsd/internal/applecerts"
	"github.com/xapsd/xapsd/internal/regularfile"
)

// ErrNoVendor says that the macOS Server vendor identity is not
// configured, so xapsd cannot sign a request to Apple's certificate
// service.
var ErrNoVendor = errors.New("appleId is set, but appleIdVendorCertificate and appleIdVendorKey are not: requests to " +
	"Apple's push certificate service must be signed with the macOS Server vendor identity (its vendor certificate chain " +
	"and RSA key), which xapsd does not ship; extract them from your own copy of macOS Server, or better use a push " +
	"certificate file or a .p8 key, because Apple has refused all such requests since 2024-10-29 (see docs/credentials.md)")

// vendor is the identity that signs certificate requests (docs/protocol.md#apple-cert-request).
type vendor struct {
	chain []*x509.Certificate // vendor certificate first
	key   *rsa.PrivateKey
}

// maxVendorFile caps what is read from a vendor file; real ones are a few
// kilobytes.
const maxVendorFile = 1 << 20

// loadVendor reads the vendor chain and key. The vendor certificates Apple
// built into macOS Server expired in 2015 and Apple accepted them anyway,
// so validity dates are deliberately not checked.
func loadVendor(certPath, keyPath string) (*vendor, error) {
	certData, err := readSmall(certPath)
	if err != nil {
		return nil, fmt.Errorf("read vendor certificate %s: %w", certPath, err)
	}
	keyData, err := readSmall(keyPath)
	if err != nil {
		return nil, fmt.Errorf("read vendor key %s: %w", keyPath, err)
	}
	return parseVendor(certData, keyData, certPath, keyPath)
}

func parseVendor(certData, keyData []byte, certPath, keyPath string) (*vendor, error) {
	v := &vendor{}
	for rest := certData; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("vendor certificate %s: certificate #%d: %w", certPath, len(v.chain)+1, err)
		}
		v.chain = append(v.chain, c)
	}
	if len(v.chain) == 0 {
		return nil, fmt.Errorf("vendor certificate %s: no -----BEGIN CERTIFICATE----- block", certPath)
	}
	var keys []*rsa.PrivateKey
	for rest := keyData; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if !strings.HasSuffix(b.Type, "PRIVATE KEY") {
			continue
		}
		if b.Type == "ENCRYPTED PRIVATE KEY" || strings.Contains(b.Headers["Proc-Type"], "ENCRYPTED") {
			return nil, fmt.Errorf("vendor key %s is encrypted; write it unencrypted (openssl pkey -in old.pem -out new.pem)", keyPath)
		}
		k, err := applecerts.ParseRSAKey(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("vendor key %s: %w", keyPath, err)
		}
		keys = append(keys, k)
	}
	switch len(keys) {
	case 0:
		return nil, fmt.Errorf("vendor key %s: no -----BEGIN RSA PRIVATE KEY----- or -----BEGIN PRIVATE KEY----- block", keyPath)
	case 1:
	default:
		return nil, fmt.Errorf("vendor key %s holds %d keys; keep only the one of the vendor certificate", keyPath, len(keys))
	}
	v.key = keys[0]
	if !v.key.PublicKey.Equal(v.chain[0].PublicKey) {
		return nil, fmt.Errorf("vendor key %s does not belong to the first certificate in %s (%s)", keyPath, certPath, v.chain[0].Subject.CommonName)
	}
	return v, nil
}

// readState reads the files of the state folder as applecerts does: never
// through a symbolic link.
func readState(path string) ([]byte, error) { return applecerts.ReadFile(path) }

// readSmall reads a vendor file, up to maxVendorFile bytes.
func readSmall(path string) ([]byte, error) {
	data, err := regularfile.ReadFile(path, 0, maxVendorFile)
	if errors.Is(err, regularfile.ErrTooLarge) {
		return nil, fmt.Errorf("larger than %d bytes", maxVendorFile)
	}
	if err != nil {
		return nil, unwrapPath(err)
	}
	return data, nil
}

// unwrapPath drops the *fs.PathError wrapper whose path the caller names
// already.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
