// Package testpki makes throw-away certificate authorities, push
// certificates, TLS server certificates, PKCS#12 bundles and APNs .p8 keys
// for tests and for the benchmark tool.
//
// It deliberately does not import "testing", so commands such as
// xapsd-bench can use it too; every function returns an error instead of
// failing a test. Nothing here is fit for production: keys are generated on
// the fly and never protected.
package testpki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"

	"github.com/sideshow/apns2/token"
	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// OIDUID is the LDAP userid attribute (RFC 4519). Apple puts the push
// topic there as the first attribute of a push certificate's subject
// (docs/protocol.md#apns-topic).
var OIDUID = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 1}

// KeyType selects the key algorithm of an issued certificate.
type KeyType int

const (
	// RSA2048 is what Apple's push certificates use, hence the default.
	RSA2048 KeyType = iota
	// ECDSAP256 is quicker to generate; handy for TLS server certificates.
	ECDSAP256
)

// CA is a self-signed certificate authority that issues leaves.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA makes a CA valid from an hour ago for ten years. Its key is
// ECDSA P-256 because the CA's own algorithm never matters to the code
// under test and RSA generation is slow.
func NewCA(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"xapsd test PKI"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate %q: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate %q: %w", name, err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// CertPEM is the CA certificate, to write a trust file.
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// CertPool trusts only this CA.
func (ca *CA) CertPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// IssueOptions describes a leaf certificate. The zero value gives an
// RSA-2048 client certificate without a subject, valid from an hour ago
// for a year.
type IssueOptions struct {
	// UID becomes the first subject attribute, as in Apple push
	// certificates, where it carries the topic. Empty leaves it out.
	UID        string
	CommonName string
	// NotBefore defaults to an hour ago; NotAfter to a year after NotBefore.
	NotBefore time.Time
	NotAfter  time.Time
	DNSNames  []string
	// IPAddresses are subject alternative names, for servers on loopback.
	IPAddresses []net.IP
	KeyType     KeyType
	// IsServer and IsClient set the extended key usages. When neither is
	// set the certificate is a client certificate, like a push certificate.
	IsServer bool
	IsClient bool
	// Extensions are added as they are, e.g. Apple's marks of the APNs
	// environments a push certificate is for.
	Extensions []pkix.Extension
}

// Leaf is an issued certificate with its private key.
type Leaf struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// Chain holds the issuing CA, so bundles can carry a full chain.
	Chain []*x509.Certificate
}

// Issue signs a new leaf.
func (ca *CA) Issue(o IssueOptions) (*Leaf, error) {
	key, err := newKey(o.KeyType)
	if err != nil {
		return nil, err
	}
	subject, err := subjectDER(o.UID, o.CommonName)
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	notBefore := o.NotBefore
	if notBefore.IsZero() {
		notBefore = time.Now().Add(-time.Hour)
	}
	notAfter := o.NotAfter
	if notAfter.IsZero() {
		notAfter = notBefore.AddDate(1, 0, 0)
	}
	usage := x509.KeyUsageDigitalSignature
	if o.KeyType == RSA2048 {
		// RSA key exchange in TLS 1.2 needs it; harmless otherwise.
		usage |= x509.KeyUsageKeyEncipherment
	}
	var ext []x509.ExtKeyUsage
	if o.IsServer {
		ext = append(ext, x509.ExtKeyUsageServerAuth)
	}
	if o.IsClient || !o.IsServer {
		ext = append(ext, x509.ExtKeyUsageClientAuth)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		RawSubject:            subject,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              usage,
		ExtKeyUsage:           ext,
		BasicConstraintsValid: true,
		DNSNames:              o.DNSNames,
		IPAddresses:           o.IPAddresses,
		ExtraExtensions:       o.Extensions,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("create certificate uid=%q cn=%q: %w", o.UID, o.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse issued certificate: %w", err)
	}
	return &Leaf{Cert: cert, Key: key, Chain: []*x509.Certificate{ca.Cert}}, nil
}

// subjectDER builds the subject by hand because pkix.Name always writes
// its ExtraNames after the standard attributes, and the UID has to come
// first to look like Apple's certificates.
func subjectDER(uid, cn string) ([]byte, error) {
	var rdns pkix.RDNSequence
	if uid != "" {
		rdns = append(rdns, pkix.RelativeDistinguishedNameSET{{Type: OIDUID, Value: uid}})
	}
	if cn != "" {
		rdns = append(rdns, pkix.RelativeDistinguishedNameSET{{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: cn}})
	}
	rdns = append(rdns, pkix.RelativeDistinguishedNameSET{{Type: asn1.ObjectIdentifier{2, 5, 4, 6}, Value: "US"}})
	der, err := asn1.Marshal(rdns)
	if err != nil {
		return nil, fmt.Errorf("encode subject uid=%q cn=%q: %w", uid, cn, err)
	}
	return der, nil
}

// SubjectUID returns the first UID attribute of the certificate's
// subject, or "" when there is none.
func SubjectUID(c *x509.Certificate) string {
	for _, atv := range c.Subject.Names {
		if atv.Type.Equal(OIDUID) {
			if s, ok := atv.Value.(string); ok {
				return s
			}
		}
	}
	return ""
}

func newKey(t KeyType) (crypto.Signer, error) {
	switch t {
	case RSA2048:
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, fmt.Errorf("generate RSA key: %w", err)
		}
		return k, nil
	case ECDSAP256:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate ECDSA key: %w", err)
		}
		return k, nil
	}
	return nil, fmt.Errorf("unknown key type %d", t)
}

func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// CertPEM is the leaf certificate alone.
func (l *Leaf) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: l.Cert.Raw})
}

// ChainPEM is the leaf followed by its issuing CA, as in a "fullchain" file.
func (l *Leaf) ChainPEM() []byte {
	var b bytes.Buffer
	b.Write(l.CertPEM())
	for _, c := range l.Chain {
		b.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	return b.Bytes()
}

// KeyPEM is the private key in the traditional OpenSSL form: PKCS#1
// "RSA PRIVATE KEY" for RSA, SEC 1 "EC PRIVATE KEY" for ECDSA.
func (l *Leaf) KeyPEM() []byte {
	switch k := l.Key.(type) {
	case *rsa.PrivateKey:
		return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			// Only fails for curves Go cannot encode; ours is P-256.
			panic(fmt.Sprintf("testpki: encode EC key: %v", err))
		}
		return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	}
	panic(fmt.Sprintf("testpki: unexpected key type %T", l.Key))
}

// KeyPKCS8PEM is the private key as PKCS#8 "PRIVATE KEY", the form
// OpenSSL 3 and Keychain exports write.
func (l *Leaf) KeyPKCS8PEM() []byte {
	der, err := x509.MarshalPKCS8PrivateKey(l.Key)
	if err != nil {
		panic(fmt.Sprintf("testpki: encode PKCS#8 key: %v", err))
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// TLSCertificate is the leaf and its chain, ready for a tls.Config.
func (l *Leaf) TLSCertificate() tls.Certificate {
	c := tls.Certificate{Certificate: [][]byte{l.Cert.Raw}, PrivateKey: l.Key, Leaf: l.Cert}
	for _, ca := range l.Chain {
		c.Certificate = append(c.Certificate, ca.Raw)
	}
	return c
}

// P12Legacy bundles the leaf, its chain and key the way OpenSSL 1.x and
// older macOS Keychain exports did: RC2-40 for certificates, 3DES for the
// key, HMAC-SHA-1 MAC. golang.org/x/crypto/pkcs12 can read these.
func P12Legacy(l *Leaf, password string) ([]byte, error) {
	return encodeP12(pkcs12.LegacyRC2, l, password)
}

// P12Modern bundles like OpenSSL 3's default and recent macOS: PBES2 with
// AES-256-CBC and an HMAC-SHA-256 MAC, which x/crypto/pkcs12 rejects.
func P12Modern(l *Leaf, password string) ([]byte, error) {
	return encodeP12(pkcs12.Modern2023, l, password)
}

func encodeP12(enc *pkcs12.Encoder, l *Leaf, password string) ([]byte, error) {
	der, err := enc.Encode(l.Key, l.Cert, l.Chain, password)
	if err != nil {
		return nil, fmt.Errorf("encode PKCS#12: %w", err)
	}
	return der, nil
}

// P12MAC reads the MAC algorithm of a PKCS#12 file (SHA-1 for the legacy
// format, SHA-256 for the modern one), so that a test can prove a file
// is in the format it claims to test.
func P12MAC(der []byte) (asn1.ObjectIdentifier, error) {
	var pfx struct {
		Version  int
		AuthSafe asn1.RawValue
		MacData  struct {
			Mac struct {
				Algorithm pkix.AlgorithmIdentifier
				Digest    []byte
			}
			Salt       []byte
			Iterations int `asn1:"optional,default:1"`
		} `asn1:"optional"`
	}
	if _, err := asn1.Unmarshal(der, &pfx); err != nil {
		return nil, fmt.Errorf("parse PKCS#12: %w", err)
	}
	return pfx.MacData.Mac.Algorithm.Algorithm, nil
}

// NewP8Key makes an APNs auth key as Apple's developer portal hands it
// out: an EC P-256 key in a PKCS#8 "PRIVATE KEY" PEM block.
func NewP8Key() (pemBytes []byte, key *ecdsa.PrivateKey, err error) {
	key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate auth key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode auth key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), key, nil
}

// NewPushCert issues a push certificate for topic (its UID) from a CA of
// its own, for a client that does not need to know the CA.
func NewPushCert(topic string) (*Leaf, error) {
	ca, err := NewCA("push CA")
	if err != nil {
		return nil, err
	}
	return ca.Issue(IssueOptions{UID: topic})
}

// NewProviderToken makes a provider token as a daemon in token mode
// holds it: a fresh .p8 key, key id ABCDEFGHIJ, team KLMNOPQRST, and its
// first bearer signed.
func NewProviderToken() (*token.Token, error) {
	_, key, err := NewP8Key()
	if err != nil {
		return nil, err
	}
	tok := &token.Token{AuthKey: key, KeyID: "ABCDEFGHIJ", TeamID: "KLMNOPQRST"}
	if _, err := tok.Generate(); err != nil {
		return nil, fmt.Errorf("sign the provider token: %w", err)
	}
	return tok, nil
}

// ServerCert issues an ECDSA server certificate for the given hosts (IP
// addresses or DNS names); with none it covers 127.0.0.1, ::1 and
// localhost, which is where test servers listen.
func ServerCert(ca *CA, hosts ...string) (*Leaf, error) {
	if ca == nil {
		return nil, errors.New("server certificate: no CA")
	}
	if len(hosts) == 0 {
		hosts = []string{"127.0.0.1", "::1", "localhost"}
	}
	o := IssueOptions{CommonName: hosts[0], KeyType: ECDSAP256, IsServer: true}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			o.IPAddresses = append(o.IPAddresses, ip)
		} else {
			o.DNSNames = append(o.DNSNames, h)
		}
	}
	return ca.Issue(o)
}
