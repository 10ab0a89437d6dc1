package creds

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// oidUID is the LDAP userid attribute where Apple puts the push topic
// (docs/protocol.md#apns-topic).
var oidUID = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 1}

// Apple marks a push certificate with the APNs environments it works in
// (apnsEndpoint development or production); a universal certificate
// carries both marks.
var (
	oidAPNsDevelopment = asn1.ObjectIdentifier{1, 2, 840, 113635, 100, 6, 3, 1}
	oidAPNsProduction  = asn1.ObjectIdentifier{1, 2, 840, 113635, 100, 6, 3, 2}
)

// Environments lists the APNs environments Apple marked c for:
// EnvDevelopment, EnvProduction, both, or none for a certificate without
// Apple's marks (an older or a test certificate), which is then not
// checked.
func Environments(c *x509.Certificate) []string {
	var out []string
	for _, e := range []struct {
		oid  asn1.ObjectIdentifier
		name string
	}{{oidAPNsDevelopment, EnvDevelopment}, {oidAPNsProduction, EnvProduction}} {
		for _, ext := range c.Extensions {
			if ext.Id.Equal(e.oid) {
				out = append(out, e.name)
				break
			}
		}
	}
	return out
}

// The APNs environments, as apnsEndpoint names them.
const (
	EnvDevelopment = "development"
	EnvProduction  = "production"
)

// TopicFromCertificate returns the push topic: the UID attribute of the
// certificate's subject. The original daemon insisted on UID being the
// first attribute; Apple always puts it there, but nothing depends on the
// position, so any position is accepted and the first UID wins.
func TopicFromCertificate(c *x509.Certificate) (string, error) {
	for _, atv := range c.Subject.Names {
		if !atv.Type.Equal(oidUID) {
			continue
		}
		s, ok := atv.Value.(string)
		if !ok || s == "" {
			return "", fmt.Errorf("subject %q: UID attribute is empty or not a string: %w", c.Subject.String(), ErrNoTopic)
		}
		return s, nil
	}
	return "", fmt.Errorf("subject %q: %w", c.Subject.String(), ErrNoTopic)
}

// loadPEM reads a PEM certificate and its key. keyPath may be empty when
// the key sits in the certificate file, as in a combined .pem export.
func loadPEM(certPath, keyPath string, now time.Time) (*Credential, error) {
	certData, err := readFile("certificate", certPath)
	if err != nil {
		return nil, err
	}
	var keyData []byte
	if keyPath != "" && keyPath != certPath {
		if keyData, err = readFile("private key", keyPath); err != nil {
			return nil, err
		}
	} else {
		keyPath = ""
	}
	return certFromPEM(certData, keyData, certPath, keyPath, now)
}

// certFromPEM is loadPEM without the file system, so it can be fuzzed.
// keyData nil means the key is looked for in certData.
func certFromPEM(certData, keyData []byte, certPath, keyPath string, now time.Time) (*Credential, error) {
	certs, keys, err := parsePEM(certData, certPath)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("certificate file %s: %w (expected a -----BEGIN CERTIFICATE----- block)", certPath, ErrNoCertificate)
	}
	keyFile := certPath
	if keyPath != "" {
		keyFile = keyPath
		// A key file may hold the certificate too; only its key counts.
		if _, keys, err = parsePEM(keyData, keyPath); err != nil {
			return nil, err
		}
	}
	switch {
	case len(keys) == 0 && keyPath == "":
		return nil, fmt.Errorf("certificate file %s: %w, and no separate key file is configured", certPath, ErrNoKey)
	case len(keys) == 0:
		return nil, fmt.Errorf("private key file %s: %w", keyPath, ErrNoKey)
	case len(keys) > 1:
		return nil, fmt.Errorf("private key file %s holds %d private keys; keep only the push certificate's", keyFile, len(keys))
	}
	key := keys[0]
	// The first certificate is the leaf (the order every tool writes);
	// later ones are the chain, passed on to the TLS handshake.
	leaf, chain := certs[0], certs[1:]
	if !keyMatches(leaf, key) {
		for i, c := range chain {
			if keyMatches(c, key) {
				return nil, fmt.Errorf("certificate file %s: the private key belongs to certificate #%d, not the first; put the push certificate first", certPath, i+2)
			}
		}
		return nil, fmt.Errorf("certificate %s and key %s: %w", certPath, keyFile, ErrKeyMismatch)
	}
	sources := []string{certPath}
	if keyPath != "" {
		sources = append(sources, keyPath)
	}
	return certCredential(leaf, chain, key, certPath, sources, now)
}

// parsePEM collects the certificates and private keys of a PEM file and
// ignores other blocks (EC PARAMETERS, bag attributes are outside blocks
// anyway). A file with no PEM at all may be a DER certificate, which is
// how Apple's portal hands out aps.cer.
func parsePEM(data []byte, path string) ([]*x509.Certificate, []crypto.Signer, error) {
	var (
		certs  []*x509.Certificate
		keys   []crypto.Signer
		blocks int
	)
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		blocks++
		switch b.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, nil, fmt.Errorf("certificate #%d in %s: %w", len(certs)+1, path, err)
			}
			certs = append(certs, c)
		case "ENCRYPTED PRIVATE KEY":
			return nil, nil, fmt.Errorf("%s: %w; write it unencrypted (openssl pkey -in old.pem -out new.pem)", path, ErrEncryptedKey)
		case "RSA PRIVATE KEY", "EC PRIVATE KEY", "PRIVATE KEY":
			if strings.Contains(b.Headers["Proc-Type"], "ENCRYPTED") {
				return nil, nil, fmt.Errorf("%s: %w; write it unencrypted (openssl pkey -in old.pem -out new.pem)", path, ErrEncryptedKey)
			}
			k, err := parseKey(b.Bytes)
			if err != nil {
				return nil, nil, fmt.Errorf("%s block in %s: %w", b.Type, path, err)
			}
			keys = append(keys, k)
		}
	}
	if blocks > 0 {
		return certs, keys, nil
	}
	if c, err := x509.ParseCertificate(data); err == nil {
		return []*x509.Certificate{c}, nil, nil
	}
	if len(data) > 0 && data[0] == 0x30 {
		return nil, nil, fmt.Errorf("%s is binary (DER) but not a certificate; a .p12 file belongs in the PKCS#12 setting", path)
	}
	return nil, nil, fmt.Errorf("%s contains no PEM data", path)
}

// parseKey accepts the three encodings OpenSSL and Keychain write,
// whatever the block label says: labels get edited by hand.
func parseKey(der []byte) (crypto.Signer, error) {
	if k, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		return asSigner(k)
	}
	if k, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return k, nil
	}
	if k, err := x509.ParseECPrivateKey(der); err == nil {
		return k, nil
	}
	return nil, errors.New("not a PKCS#1, PKCS#8 or EC private key")
}

func asSigner(k any) (crypto.Signer, error) {
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported private key type %T", k)
	}
	return s, nil
}

func keyMatches(c *x509.Certificate, k crypto.Signer) bool {
	pub, ok := c.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(k.Public())
}

// loadP12 reads a PKCS#12 bundle. go-pkcs12 reads both the legacy
// (RC2/3DES, SHA-1 MAC) files that golang.org/x/crypto/pkcs12 handled and
// the PBES2/AES, SHA-256 MAC files that OpenSSL 3 and current macOS
// write, which the original daemon could not load.
func loadP12(path, password string, now time.Time) (*Credential, error) {
	data, err := readFile("PKCS#12 file", path)
	if err != nil {
		return nil, err
	}
	return certFromP12(data, password, path, now)
}

// certFromP12 is loadP12 without the file system, so it can be fuzzed.
func certFromP12(data []byte, password, path string, now time.Time) (*Credential, error) {
	if bytes.Contains(data[:min(len(data), 64)], []byte("-----BEGIN")) {
		return nil, fmt.Errorf("PKCS#12 file %s is PEM text; configure it as a PEM certificate instead", path)
	}
	if n := p12MaxIterations(data); n.Cmp(big.NewInt(maxP12Iterations)) > 0 {
		return nil, fmt.Errorf("PKCS#12 file %s asks for %s key-derivation iterations, more than the %d allowed; "+
			"re-export it with fewer (openssl pkcs12 -export -iter 2048)", path, n, maxP12Iterations)
	}
	rawKey, leaf, chain, err := pkcs12.DecodeChain(data, password)
	if err != nil {
		switch {
		case errors.Is(err, pkcs12.ErrIncorrectPassword) && password == "":
			return nil, fmt.Errorf("PKCS#12 file %s: %w: the file needs a password and none is configured", path, ErrWrongPassword)
		case errors.Is(err, pkcs12.ErrIncorrectPassword), errors.Is(err, pkcs12.ErrDecryption):
			return nil, fmt.Errorf("PKCS#12 file %s: %w", path, ErrWrongPassword)
		}
		// go-pkcs12's messages are about structure, never content.
		return nil, fmt.Errorf("PKCS#12 file %s: %w", path, err)
	}
	key, err := asSigner(rawKey)
	if err != nil {
		return nil, fmt.Errorf("PKCS#12 file %s: %w", path, err)
	}
	// Bags in a PKCS#12 file carry no order that tools agree on; the leaf
	// is the certificate whose public key is the private key's.
	if !keyMatches(leaf, key) {
		all := append([]*x509.Certificate{leaf}, chain...)
		i := slices.IndexFunc(all, func(c *x509.Certificate) bool { return keyMatches(c, key) })
		if i < 0 {
			return nil, fmt.Errorf("PKCS#12 file %s: %w", path, ErrKeyMismatch)
		}
		leaf, chain = all[i], append(all[:i:i], all[i+1:]...)
	}
	return certCredential(leaf, chain, key, path, []string{path}, now)
}

// certCredential runs the checks common to PEM and PKCS#12.
func certCredential(leaf *x509.Certificate, chain []*x509.Certificate, key crypto.Signer, path string, sources []string, now time.Time) (*Credential, error) {
	topic, err := TopicFromCertificate(leaf)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", path, err)
	}
	// APNs refuses an expired or future certificate at the handshake;
	// failing here says why instead of a TLS alert on every push.
	if now.After(leaf.NotAfter) {
		return nil, &ValidityError{Path: path, Topic: topic, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, Err: ErrExpired}
	}
	if now.Before(leaf.NotBefore) {
		return nil, &ValidityError{Path: path, Topic: topic, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, Err: ErrNotYetValid}
	}
	tc := &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	for _, c := range chain {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	cred := &Credential{
		Mode:         ModeCertificate,
		Topic:        topic,
		Certificate:  tc,
		NotAfter:     leaf.NotAfter,
		Sources:      sources,
		Environments: Environments(leaf),
	}
	if left := leaf.NotAfter.Sub(now); left < expiryWarning {
		cred.ExpiryWarning = fmt.Sprintf("certificate %s expires on %s, in %d days; renew it before pushes stop",
			path, leaf.NotAfter.UTC().Format(time.RFC3339), int(left.Hours()/24))
	}
	cred.Warnings = append(cred.Warnings, topicWarnings(topic)...)
	return cred, nil
}

func topicWarnings(topic string) []string {
	var w []string
	if len(topic) < minTopicLen {
		w = append(w, fmt.Sprintf("topic %q is %d bytes; the stock Dovecot plugin needs more than 50 and crashes "+
			"the imap process on a shorter /register reply", topic, len(topic)))
	}
	if m := MailTopicWarning(topic); m != "" {
		w = append(w, m)
	}
	return w
}
