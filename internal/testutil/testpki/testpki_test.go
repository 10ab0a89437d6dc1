package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"net"
	"testing"
	"time"

	"github.com/sideshow/apns2/token"
	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

const topic = "com.apple.mail.XServer.01234567-89ab-cdef-0123-456789abcdef"

func newCA(t *testing.T) *CA {
	t.Helper()
	ca, err := NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestIssuePutsUIDFirst(t *testing.T) {
	ca := newCA(t)
	leaf, err := ca.Issue(IssueOptions{UID: topic, CommonName: "Apple Push Services: " + topic})
	if err != nil {
		t.Fatal(err)
	}
	var rdns pkix.RDNSequence
	if rest, err := asn1.Unmarshal(leaf.Cert.RawSubject, &rdns); err != nil || len(rest) != 0 {
		t.Fatalf("subject does not parse: %v", err)
	}
	if len(rdns) == 0 || !rdns[0][0].Type.Equal(OIDUID) || rdns[0][0].Value != topic {
		t.Fatalf("first subject attribute is %v, want UID=%s", rdns[0], topic)
	}
	if got := SubjectUID(leaf.Cert); got != topic {
		t.Errorf("SubjectUID = %q", got)
	}
	if leaf.Cert.Subject.CommonName != "Apple Push Services: "+topic {
		t.Errorf("CN = %q", leaf.Cert.Subject.CommonName)
	}
	if _, ok := leaf.Key.(*rsa.PrivateKey); !ok || leaf.Cert.PublicKeyAlgorithm != x509.RSA {
		t.Errorf("default key is %T, want RSA", leaf.Key)
	}
	if n := leaf.Key.(*rsa.PrivateKey).N.BitLen(); n != 2048 {
		t.Errorf("RSA key has %d bits", n)
	}
	// A push certificate must verify as a client certificate under the CA.
	if _, err := leaf.Cert.Verify(x509.VerifyOptions{Roots: ca.CertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("leaf does not verify as a client certificate: %v", err)
	}
}

func TestIssueWithoutUID(t *testing.T) {
	leaf, err := newCA(t).Issue(IssueOptions{CommonName: "no uid", KeyType: ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	if got := SubjectUID(leaf.Cert); got != "" {
		t.Errorf("SubjectUID = %q, want none", got)
	}
	if _, ok := leaf.Key.(*ecdsa.PrivateKey); !ok {
		t.Errorf("key is %T, want ECDSA", leaf.Key)
	}
}

func TestIssueValidity(t *testing.T) {
	ca := newCA(t)
	nb := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	na := nb.Add(48 * time.Hour)
	leaf, err := ca.Issue(IssueOptions{UID: "x", NotBefore: nb, NotAfter: na, KeyType: ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	if !leaf.Cert.NotBefore.Equal(nb) || !leaf.Cert.NotAfter.Equal(na) {
		t.Errorf("validity %v..%v, want %v..%v", leaf.Cert.NotBefore, leaf.Cert.NotAfter, nb, na)
	}
	def, err := ca.Issue(IssueOptions{UID: "x", KeyType: ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if def.Cert.NotBefore.After(now) || def.Cert.NotAfter.Before(now.AddDate(0, 11, 0)) {
		t.Errorf("default validity %v..%v does not cover now and most of a year", def.Cert.NotBefore, def.Cert.NotAfter)
	}
}

func TestKeysComeInTraditionalAndPKCS8PEM(t *testing.T) {
	ca := newCA(t)
	for _, kt := range []KeyType{RSA2048, ECDSAP256} {
		leaf, err := ca.Issue(IssueOptions{UID: topic, KeyType: kt})
		if err != nil {
			t.Fatal(err)
		}
		wantType := map[KeyType]string{RSA2048: "RSA PRIVATE KEY", ECDSAP256: "EC PRIVATE KEY"}[kt]
		for _, k := range []struct {
			pem      []byte
			wantType string
		}{{leaf.KeyPEM(), wantType}, {leaf.KeyPKCS8PEM(), "PRIVATE KEY"}} {
			b, _ := pem.Decode(k.pem)
			if b == nil || b.Type != k.wantType {
				t.Fatalf("key type %d: PEM block %v, want %q", kt, b, k.wantType)
			}
			if _, err := tls.X509KeyPair(leaf.CertPEM(), k.pem); err != nil {
				t.Errorf("key type %d, %s: cert and key do not pair: %v", kt, k.wantType, err)
			}
		}
		chain, err := tls.X509KeyPair(leaf.ChainPEM(), leaf.KeyPEM())
		if err != nil {
			t.Fatal(err)
		}
		if len(chain.Certificate) != 2 || string(chain.Certificate[1]) != string(ca.Cert.Raw) {
			t.Errorf("ChainPEM has %d certificates, want leaf then CA", len(chain.Certificate))
		}
		tc := leaf.TLSCertificate()
		if tc.Leaf != leaf.Cert || len(tc.Certificate) != 2 || tc.PrivateKey != leaf.Key {
			t.Errorf("TLSCertificate incomplete: %d certs, leaf %v", len(tc.Certificate), tc.Leaf != nil)
		}
	}
}

func TestP12WritersDifferInMACAndRoundTripWithAPassword(t *testing.T) {
	ca := newCA(t)
	leaf, err := ca.Issue(IssueOptions{UID: topic})
	if err != nil {
		t.Fatal(err)
	}
	sha1 := asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
	sha256 := asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	for _, c := range []struct {
		name  string
		write func(*Leaf, string) ([]byte, error)
		mac   asn1.ObjectIdentifier
	}{{"legacy", P12Legacy, sha1}, {"modern", P12Modern, sha256}} {
		for _, pw := range []string{"", "s3cret"} {
			der, err := c.write(leaf, pw)
			if err != nil {
				t.Fatal(err)
			}
			got, err := P12MAC(der)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Equal(c.mac) {
				t.Errorf("%s: MAC algorithm %v, want %v", c.name, got, c.mac)
			}
			key, cert, chain, err := pkcs12.DecodeChain(der, pw)
			if err != nil {
				t.Fatalf("%s pw=%q: %v", c.name, pw, err)
			}
			if !cert.Equal(leaf.Cert) || len(chain) != 1 || !chain[0].Equal(ca.Cert) {
				t.Errorf("%s: wrong certificates back", c.name)
			}
			if !leaf.Key.Public().(*rsa.PublicKey).Equal(key.(*rsa.PrivateKey).Public()) {
				t.Errorf("%s: wrong key back", c.name)
			}
			if pw != "" {
				if _, _, _, err := pkcs12.DecodeChain(der, "wrong"); err == nil {
					t.Errorf("%s: wrong password accepted", c.name)
				}
			}
		}
	}
}

func TestNewP8KeyIsAP256KeyApns2Accepts(t *testing.T) {
	p, key, err := NewP8Key()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(p)
	if b == nil || b.Type != "PRIVATE KEY" {
		t.Fatalf("PEM block %v, want PRIVATE KEY", b)
	}
	got, err := token.AuthKeyFromBytes(p)
	if err != nil {
		t.Fatalf("apns2 rejects the key: %v", err)
	}
	if !got.Equal(key) || key.Curve != elliptic.P256() {
		t.Error("parsed key differs or is not P-256")
	}
}

func TestServerCertIsValidForLoopbackOnly(t *testing.T) {
	ca := newCA(t)
	srv, err := ServerCert(ca)
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"127.0.0.1", "::1", "localhost"} {
		if _, err := srv.Cert.Verify(x509.VerifyOptions{Roots: ca.CertPool(), DNSName: host}); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
	if _, err := srv.Cert.Verify(x509.VerifyOptions{Roots: ca.CertPool(), DNSName: "example.com"}); err == nil {
		t.Error("server certificate valid for a host it was not issued for")
	}

	// A real handshake, as fakeapns will use it.
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{srv.TLSCertificate()}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: ca.CertPool()})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	c.Close()

	named, err := ServerCert(ca, "api.push.example", "127.0.0.2")
	if err != nil {
		t.Fatal(err)
	}
	if len(named.Cert.DNSNames) != 1 || len(named.Cert.IPAddresses) != 1 || !named.Cert.IPAddresses[0].Equal(net.ParseIP("127.0.0.2")) {
		t.Errorf("SANs %v %v", named.Cert.DNSNames, named.Cert.IPAddresses)
	}
	if _, err := ServerCert(nil); err == nil {
		t.Error("nil CA accepted")
	}
}
