package creds

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

const topic = "com.apple.mail.XServer.01234567-89ab-cdef-0123-456789abcdef" // 59 bytes, as Apple issues

// fixture holds certificates shared by the tests; RSA keys take a while
// to generate under -race, so they are made once.
type fixture struct {
	ca       *testpki.CA
	now      time.Time
	rsa      *testpki.Leaf // valid for a year, PKCS#1 key
	ec       *testpki.Leaf // valid for a year, EC key
	other    *testpki.Leaf // a different key with the same topic
	noUID    *testpki.Leaf
	expired  *testpki.Leaf
	future   *testpki.Leaf
	expiring *testpki.Leaf // ten days left
	short    *testpki.Leaf // 18-byte topic
}

var (
	fixOnce sync.Once
	fix     fixture
	fixErr  error
)

func getFixture(t *testing.T) *fixture {
	t.Helper()
	fixOnce.Do(func() {
		now := time.Now().Truncate(time.Second)
		ca, err := testpki.NewCA("creds test CA")
		if err != nil {
			fixErr = err
			return
		}
		f := fixture{ca: ca, now: now}
		year := testpki.IssueOptions{UID: topic, CommonName: "Apple Push Services: " + topic, NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0)}
		issue := func(dst **testpki.Leaf, o testpki.IssueOptions) {
			if fixErr == nil {
				*dst, fixErr = ca.Issue(o)
			}
		}
		issue(&f.rsa, year)
		ec := year
		ec.KeyType = testpki.ECDSAP256
		issue(&f.ec, ec)
		issue(&f.other, ec)
		noUID := ec
		noUID.UID = ""
		issue(&f.noUID, noUID)
		expired := ec
		expired.NotBefore, expired.NotAfter = now.AddDate(-1, 0, 0), now.Add(-time.Minute)
		issue(&f.expired, expired)
		future := ec
		future.NotBefore, future.NotAfter = now.Add(time.Hour), now.AddDate(1, 0, 0)
		issue(&f.future, future)
		expiring := ec
		expiring.NotAfter = now.Add(10*24*time.Hour + time.Hour)
		issue(&f.expiring, expiring)
		short := ec
		short.UID = "com.apple.mail.nil"
		issue(&f.short, short)
		fix = f
	})
	if fixErr != nil {
		t.Fatal(fixErr)
	}
	return &fix
}

func write(t *testing.T, dir, name string, data ...[]byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	var all []byte
	for _, d := range data {
		all = append(all, d...)
	}
	if err := os.WriteFile(p, all, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// mustLoad loads and checks what every certificate credential must hold.
func mustLoad(t *testing.T, f Files, now time.Time, want *testpki.Leaf) *Credential {
	t.Helper()
	c, err := Load(f, now)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.Mode != ModeCertificate || c.Token != nil {
		t.Fatalf("mode %v, token %v", c.Mode, c.Token)
	}
	if c.Certificate == nil || c.Certificate.Leaf == nil || !c.Certificate.Leaf.Equal(want.Cert) {
		t.Fatal("wrong or missing leaf certificate")
	}
	if string(c.Certificate.Certificate[0]) != string(want.Cert.Raw) {
		t.Fatal("first DER certificate is not the leaf")
	}
	signer, ok := c.Certificate.PrivateKey.(crypto.Signer)
	if !ok || !keyMatches(want.Cert, signer) {
		t.Fatal("key does not match the certificate")
	}
	if c.Topic != testpki.SubjectUID(want.Cert) {
		t.Errorf("topic %q", c.Topic)
	}
	if !c.NotAfter.Equal(want.Cert.NotAfter) {
		t.Errorf("NotAfter %v, want %v", c.NotAfter, want.Cert.NotAfter)
	}
	return c
}

// keySnippets are pieces of a key's encodings that must never show up in
// a message.
func keySnippets(l *testpki.Leaf) []string {
	var out []string
	for _, p := range [][]byte{l.KeyPEM(), l.KeyPKCS8PEM()} {
		b, _ := pem.Decode(p)
		enc := base64.StdEncoding.EncodeToString(b.Bytes)
		out = append(out, enc[40:60], enc[len(enc)/2:len(enc)/2+20])
	}
	return out
}

func assertClean(t *testing.T, msg string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(msg, s) {
			t.Errorf("message leaks secret material %q: %s", s, msg)
		}
	}
}

func TestConfiguredNeedsACredentialFile(t *testing.T) {
	for _, c := range []struct {
		f    Files
		want bool
	}{
		{Files{}, false},
		{Files{KeyID: "ABCDEFGHIJ", TeamID: "ABCDEFGHIJ", Topic: topic, P12Password: "x"}, false},
		{Files{P12: "/a.p12"}, true},
		{Files{PEMCert: "/a.pem"}, true},
		{Files{PEMKey: "/a.key"}, true},
		{Files{P8: "/a.p8"}, true},
	} {
		if got := c.f.Configured(); got != c.want {
			t.Errorf("%+v: Configured = %v", c.f, got)
		}
	}
	if _, err := Load(Files{}, time.Now()); !errors.Is(err, ErrNotConfigured) {
		t.Errorf("Load(empty) = %v", err)
	}
}

func TestPEMLoadsEveryKeyFormAndLayout(t *testing.T) {
	fx := getFixture(t)
	dir := t.TempDir()
	for _, c := range []struct {
		name      string
		leaf      *testpki.Leaf
		cert, key []byte // key nil: inside the certificate file
		chainLen  int
	}{
		{"RSA PKCS#1", fx.rsa, fx.rsa.CertPEM(), fx.rsa.KeyPEM(), 1},
		{"RSA PKCS#8", fx.rsa, fx.rsa.CertPEM(), fx.rsa.KeyPKCS8PEM(), 1},
		{"EC SEC1", fx.ec, fx.ec.CertPEM(), fx.ec.KeyPEM(), 1},
		{"EC PKCS#8", fx.ec, fx.ec.CertPEM(), fx.ec.KeyPKCS8PEM(), 1},
		{"key in cert file", fx.rsa, append(fx.rsa.CertPEM(), fx.rsa.KeyPEM()...), nil, 1},
		{"key before cert in one file", fx.ec, append(fx.ec.KeyPKCS8PEM(), fx.ec.ChainPEM()...), nil, 2},
		{"chain", fx.rsa, fx.rsa.ChainPEM(), fx.rsa.KeyPEM(), 2},
		{"DER certificate (aps.cer)", fx.rsa, fx.rsa.Cert.Raw, fx.rsa.KeyPEM(), 1},
		{"bag attributes and EC PARAMETERS around blocks", fx.ec,
			append([]byte("Bag Attributes\n    localKeyID: 01 02\nsubject=/UID=x\n"), fx.ec.CertPEM()...),
			append([]byte("-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"), fx.ec.KeyPEM()...), 1},
		{"key labelled wrongly", fx.rsa, fx.rsa.CertPEM(),
			pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(fx.rsa.Key.(*rsa.PrivateKey))}), 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := Files{PEMCert: write(t, dir, "c.pem", c.cert)}
			if c.key != nil {
				f.PEMKey = write(t, dir, "c.key", c.key)
			}
			cred := mustLoad(t, f, fx.now, c.leaf)
			if len(cred.Certificate.Certificate) != c.chainLen {
				t.Errorf("%d certificates, want %d", len(cred.Certificate.Certificate), c.chainLen)
			}
			want := []string{f.PEMCert}
			if c.key != nil {
				want = append(want, f.PEMKey)
			}
			if strings.Join(cred.Sources, ",") != strings.Join(want, ",") {
				t.Errorf("Sources %v, want %v", cred.Sources, want)
			}
			if len(cred.Warnings) != 0 {
				t.Errorf("warnings for a good credential: %v", cred.Warnings)
			}
		})
	}
}

func TestPEMKeyPathSameAsCert(t *testing.T) {
	fx := getFixture(t)
	p := write(t, t.TempDir(), "both.pem", fx.ec.CertPEM(), fx.ec.KeyPEM())
	c := mustLoad(t, Files{PEMCert: p, PEMKey: p}, fx.now, fx.ec)
	if len(c.Sources) != 1 {
		t.Errorf("Sources %v: one file should be listed once", c.Sources)
	}
}

func TestPEMErrorsNameTheFileAndTheCause(t *testing.T) {
	fx := getFixture(t)
	dir := t.TempDir()
	encrypted := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY",
		Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,00112233445566778899AABBCCDDEEFF"}, Bytes: []byte("xxxxxxxxxxxxxxxx")})
	for _, c := range []struct {
		name      string
		cert, key []byte // nil key: no key file; missing: see below
		noCert    bool   // certificate path does not exist
		noKey     bool   // key path does not exist
		wantIs    error
		wantIn    []string // substrings; "{CERT}"/"{KEY}" stand for the paths
	}{
		{name: "cert missing", noCert: true, key: fx.ec.KeyPEM(), wantIs: fs.ErrNotExist, wantIn: []string{"read certificate {CERT}", "no such file"}},
		{name: "key missing", cert: fx.ec.CertPEM(), noKey: true, wantIs: fs.ErrNotExist, wantIn: []string{"read private key {KEY}"}},
		{name: "no certificate", cert: fx.ec.KeyPEM(), key: fx.ec.KeyPEM(), wantIs: ErrNoCertificate, wantIn: []string{"{CERT}"}},
		{name: "not PEM", cert: []byte("hello\n"), key: fx.ec.KeyPEM(), wantIn: []string{"{CERT} contains no PEM data"}},
		{name: "DER but not a certificate", cert: []byte{0x30, 0x03, 0x02, 0x01, 0x03}, key: fx.ec.KeyPEM(), wantIn: []string{"{CERT} is binary (DER)", "PKCS#12"}},
		{name: "broken certificate block", cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}), key: fx.ec.KeyPEM(), wantIn: []string{"certificate #1 in {CERT}"}},
		{name: "no key in cert file", cert: fx.ec.CertPEM(), wantIs: ErrNoKey, wantIn: []string{"{CERT}", "no separate key file"}},
		{name: "no key in key file", cert: fx.ec.CertPEM(), key: fx.ec.CertPEM(), wantIs: ErrNoKey, wantIn: []string{"{KEY}"}},
		{name: "two keys", cert: fx.ec.CertPEM(), key: append(fx.ec.KeyPEM(), fx.other.KeyPEM()...), wantIn: []string{"{KEY} holds 2 private keys"}},
		{name: "broken key", cert: fx.ec.CertPEM(), key: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("not a key at all")}), wantIn: []string{"PRIVATE KEY block in {KEY}", "not a PKCS#1, PKCS#8 or EC private key"}},
		{name: "encrypted PKCS#8", cert: fx.ec.CertPEM(), key: pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte("x")}), wantIs: ErrEncryptedKey, wantIn: []string{"{KEY}"}},
		{name: "encrypted PKCS#1", cert: fx.ec.CertPEM(), key: encrypted, wantIs: ErrEncryptedKey, wantIn: []string{"{KEY}"}},
		{name: "key of another certificate", cert: fx.ec.CertPEM(), key: fx.other.KeyPEM(), wantIs: ErrKeyMismatch, wantIn: []string{"{CERT}", "{KEY}"}},
		{name: "RSA key for EC certificate", cert: fx.ec.CertPEM(), key: fx.rsa.KeyPEM(), wantIs: ErrKeyMismatch},
		{name: "leaf not first", cert: append(fx.other.CertPEM(), fx.ec.CertPEM()...), key: fx.ec.KeyPEM(), wantIn: []string{"belongs to certificate #2", "put the push certificate first"}},
		{name: "no UID", cert: fx.noUID.CertPEM(), key: fx.noUID.KeyPEM(), wantIs: ErrNoTopic, wantIn: []string{"{CERT}", "no UID"}},
		{name: "expired", cert: fx.expired.CertPEM(), key: fx.expired.KeyPEM(), wantIs: ErrExpired, wantIn: []string{"{CERT}", topic, fx.expired.Cert.NotAfter.UTC().Format(time.RFC3339)}},
		{name: "not yet valid", cert: fx.future.CertPEM(), key: fx.future.KeyPEM(), wantIs: ErrNotYetValid, wantIn: []string{"{CERT}"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := Files{PEMCert: filepath.Join(dir, "absent.pem")}
			if !c.noCert {
				f.PEMCert = write(t, dir, "c.pem", c.cert)
			}
			switch {
			case c.noKey:
				f.PEMKey = filepath.Join(dir, "absent.key")
			case c.key != nil:
				f.PEMKey = write(t, dir, "c.key", c.key)
			}
			cred, err := Load(f, fx.now)
			if err == nil {
				t.Fatalf("loaded %+v, want an error", cred)
			}
			if c.wantIs != nil && !errors.Is(err, c.wantIs) {
				t.Errorf("error %q is not %v", err, c.wantIs)
			}
			msg := err.Error()
			for _, w := range c.wantIn {
				w = strings.NewReplacer("{CERT}", f.PEMCert, "{KEY}", f.PEMKey).Replace(w)
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			for _, l := range []*testpki.Leaf{fx.ec, fx.other, fx.rsa, fx.expired, fx.future, fx.noUID} {
				assertClean(t, msg, keySnippets(l)...)
			}
		})
	}
}

// A mistyped path may point at something endless; the read must stop.
func TestHugeFileIsRefusedWithoutReadingItAll(t *testing.T) {
	fx := getFixture(t)
	p := write(t, t.TempDir(), "big.pem", make([]byte, maxFileSize+1))
	_, err := Load(Files{PEMCert: p}, fx.now)
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "not a credential file") {
		t.Fatalf("err = %v", err)
	}
}

func TestExpiryAndShortTopicWarnings(t *testing.T) {
	fx := getFixture(t)
	dir := t.TempDir()
	c := mustLoad(t, Files{PEMCert: write(t, dir, "e.pem", fx.expiring.CertPEM()), PEMKey: write(t, dir, "e.key", fx.expiring.KeyPEM())}, fx.now, fx.expiring)
	w := c.ExpiryWarning
	if len(c.Warnings) != 0 || !strings.Contains(w, "expires on "+fx.expiring.Cert.NotAfter.UTC().Format(time.RFC3339)) ||
		!strings.Contains(w, "in 10 days") || !strings.Contains(w, filepath.Join(dir, "e.pem")) {
		t.Errorf("warnings %q, expiry warning %q", c.Warnings, w)
	}
	// 30 days and a minute left is quiet; 29 days is not.
	year := Files{PEMCert: write(t, dir, "y.pem", fx.rsa.CertPEM()), PEMKey: write(t, dir, "y.key", fx.rsa.KeyPEM())}
	if c := mustLoad(t, year, fx.rsa.Cert.NotAfter.Add(-30*24*time.Hour-time.Minute), fx.rsa); c.ExpiryWarning != "" {
		t.Errorf("warned at 30 days: %q", c.ExpiryWarning)
	}
	if c := mustLoad(t, year, fx.rsa.Cert.NotAfter.Add(-29*24*time.Hour), fx.rsa); !strings.Contains(c.ExpiryWarning, "in 29 days") {
		t.Errorf("no warning at 29 days: %q", c.ExpiryWarning)
	}

	c = mustLoad(t, Files{PEMCert: write(t, dir, "s.pem", fx.short.CertPEM(), fx.short.KeyPEM())}, fx.now, fx.short)
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], `"com.apple.mail.nil" is 18 bytes`) || !strings.Contains(c.Warnings[0], "50") {
		t.Errorf("warnings %q", c.Warnings)
	}
}

func TestTopicLengthBoundary(t *testing.T) {
	pad := func(n int) string { return "com.apple.mail." + strings.Repeat("a", n-len("com.apple.mail.")) }
	if w := topicWarnings(pad(50)); len(w) != 1 {
		t.Errorf("50-byte topic: %q", w)
	}
	if w := topicWarnings(pad(51)); len(w) != 0 {
		t.Errorf("51-byte topic: %q", w)
	}
}

func TestMailTopicWarning(t *testing.T) {
	for _, tc := range []struct {
		topic string
		warn  bool
	}{
		{topic, false},
		{"com.apple.mobilemail.push.example.com", false},
		{"com.example.mailapp", true},
		{"com.apple.mgmt.External.01234567-89ab-cdef-0123-456789abcdef", true}, // an MDM topic
		{"com.apple.mailx.XServer.01234567-89ab-cdef-0123-456789abcdef", true},
		{"com.apple.mobilemail", true},
	} {
		w := MailTopicWarning(tc.topic)
		if (w != "") != tc.warn {
			t.Errorf("MailTopicWarning(%q) = %q", tc.topic, w)
		}
		if w != "" && (!strings.Contains(w, tc.topic) || !strings.Contains(w, "com.apple.mail.") || !strings.Contains(w, "com.apple.mobilemail.push.")) {
			t.Errorf("warning %q must name the topic and both prefixes", w)
		}
	}
	// A certificate or a token with such a topic says so when it loads.
	p8, _, err := testpki.NewP8Key()
	if err != nil {
		t.Fatal(err)
	}
	c, err := Load(Files{P8: write(t, t.TempDir(), "k.p8", p8), KeyID: "ABCDE12345", TeamID: "ABCDE12345",
		Topic: "com.example.app.with.a.long.bundle.identifier.for.fifty.bytes"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "not one iOS Mail listens to") {
		t.Errorf("token warnings %q", c.Warnings)
	}
}

// certWithSubject signs a certificate whose subject is exactly rdns.
func certWithSubject(t *testing.T, ca *testpki.CA, rdns pkix.RDNSequence) *x509.Certificate {
	t.Helper()
	raw, err := asn1.Marshal(rdns)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), RawSubject: raw, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestTopicFromCertificate(t *testing.T) {
	fx := getFixture(t)
	cn := asn1.ObjectIdentifier{2, 5, 4, 3}
	uid := asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 1}
	for _, c := range []struct {
		name string
		rdns pkix.RDNSequence
		want string // "" = error
	}{
		{"UID first", pkix.RDNSequence{{{Type: uid, Value: topic}}, {{Type: cn, Value: "x"}}}, topic},
		{"UID after CN", pkix.RDNSequence{{{Type: cn, Value: "x"}}, {{Type: uid, Value: "b.topic"}}}, "b.topic"},
		{"two UIDs, first wins", pkix.RDNSequence{{{Type: uid, Value: "first"}}, {{Type: uid, Value: "second"}}}, "first"},
		{"multi-valued RDN", pkix.RDNSequence{{{Type: cn, Value: "x"}, {Type: uid, Value: "m.topic"}}}, "m.topic"},
		{"no UID", pkix.RDNSequence{{{Type: cn, Value: "only a CN"}}}, ""},
		{"empty UID", pkix.RDNSequence{{{Type: uid, Value: ""}}}, ""},
		{"empty subject", pkix.RDNSequence{}, ""},
	} {
		got, err := TopicFromCertificate(certWithSubject(t, fx.ca, c.rdns))
		switch {
		case c.want == "" && !errors.Is(err, ErrNoTopic):
			t.Errorf("%s: got %q, %v; want ErrNoTopic", c.name, got, err)
		case c.want != "" && (err != nil || got != c.want):
			t.Errorf("%s: got %q, %v; want %q", c.name, got, err, c.want)
		}
	}
}

func TestP12LoadsLegacyAndModernFilesAndNamesAWrongPassword(t *testing.T) {
	fx := getFixture(t)
	dir := t.TempDir()
	for _, c := range []struct {
		name  string
		write func(*testpki.Leaf, string) ([]byte, error)
	}{{"legacy", testpki.P12Legacy}, {"modern", testpki.P12Modern}} {
		for _, leaf := range []*testpki.Leaf{fx.rsa, fx.ec} {
			for _, pw := range []string{"", "correct horse"} {
				der, err := c.write(leaf, pw)
				if err != nil {
					t.Fatal(err)
				}
				p := write(t, dir, "push.p12", der)
				cred := mustLoad(t, Files{P12: p, P12Password: pw}, fx.now, leaf)
				if len(cred.Certificate.Certificate) != 2 || len(cred.Sources) != 1 || cred.Sources[0] != p {
					t.Errorf("%s pw=%q: %d certificates, sources %v", c.name, pw, len(cred.Certificate.Certificate), cred.Sources)
				}
				if pw == "" {
					continue
				}
				_, err = Load(Files{P12: p, P12Password: "Tr0ub4dor"}, fx.now)
				if !errors.Is(err, ErrWrongPassword) || !strings.Contains(err.Error(), p) {
					t.Errorf("%s: wrong password: %v", c.name, err)
				} else {
					assertClean(t, err.Error(), "Tr0ub4dor", pw)
				}
				_, err = Load(Files{P12: p}, fx.now)
				if !errors.Is(err, ErrWrongPassword) || !strings.Contains(err.Error(), "none is configured") {
					t.Errorf("%s: missing password: %v", c.name, err)
				}
			}
		}
	}
}

// Some tools write the CA bag before the leaf; the key decides.
func TestP12LeafNotFirst(t *testing.T) {
	fx := getFixture(t)
	der, err := pkcs12.Modern2023.Encode(fx.ec.Key, fx.ca.Cert, []*x509.Certificate{fx.other.Cert, fx.ec.Cert}, "")
	if err != nil {
		t.Fatal(err)
	}
	p := write(t, t.TempDir(), "p.p12", der)
	c := mustLoad(t, Files{P12: p}, fx.now, fx.ec)
	if len(c.Certificate.Certificate) != 3 || string(c.Certificate.Certificate[1]) != string(fx.ca.Cert.Raw) ||
		string(c.Certificate.Certificate[2]) != string(fx.other.Cert.Raw) {
		t.Error("chain not kept in order after moving the leaf out")
	}

	der, err = pkcs12.Modern2023.Encode(fx.ec.Key, fx.other.Cert, []*x509.Certificate{fx.ca.Cert}, "")
	if err != nil {
		t.Fatal(err)
	}
	p = write(t, t.TempDir(), "q.p12", der)
	if _, err := Load(Files{P12: p}, fx.now); !errors.Is(err, ErrKeyMismatch) || !strings.Contains(err.Error(), p) {
		t.Errorf("mismatched P12: %v", err)
	}
}

func TestP12ErrorsNameTheFileAndTheCause(t *testing.T) {
	fx := getFixture(t)
	dir := t.TempDir()
	p12 := func(l *testpki.Leaf) []byte {
		der, err := testpki.P12Modern(l, "")
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	for _, c := range []struct {
		name   string
		data   []byte
		wantIs error
		wantIn string
	}{
		{"PEM instead", fx.ec.CertPEM(), nil, "is PEM text"},
		{"garbage", []byte("garbage"), nil, "PKCS#12 file"},
		{"empty", nil, nil, "PKCS#12 file"},
		{"truncated", p12(fx.ec)[:200], nil, "PKCS#12 file"},
		{"expired", p12(fx.expired), ErrExpired, ""},
		{"not yet valid", p12(fx.future), ErrNotYetValid, ""},
		{"no UID", p12(fx.noUID), ErrNoTopic, ""},
	} {
		p := write(t, dir, "bad.p12", c.data)
		_, err := Load(Files{P12: p}, fx.now)
		if err == nil {
			t.Errorf("%s: loaded", c.name)
			continue
		}
		if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), c.wantIn) || (c.wantIs != nil && !errors.Is(err, c.wantIs)) {
			t.Errorf("%s: error %q", c.name, err)
		}
	}
	if _, err := Load(Files{P12: filepath.Join(dir, "absent.p12")}, fx.now); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "absent.p12") {
		t.Errorf("absent P12: %v", err)
	}
}

// P12 comes first, then PEM, then .p8 (docs/protocol.md#apns-credentials).
func TestP12WinsOverPEMWhichWinsOverP8(t *testing.T) {
	fx := getFixture(t)
	dir := t.TempDir()
	der, err := testpki.P12Legacy(fx.rsa, "")
	if err != nil {
		t.Fatal(err)
	}
	p8, _, err := testpki.NewP8Key()
	if err != nil {
		t.Fatal(err)
	}
	f := Files{
		P12:     write(t, dir, "a.p12", der),
		PEMCert: write(t, dir, "b.pem", fx.ec.CertPEM(), fx.ec.KeyPEM()),
		P8:      write(t, dir, "c.p8", p8),
		KeyID:   "ABCDEFGHIJ", TeamID: "KLMNOPQRST", Topic: topic,
	}
	mustLoad(t, f, fx.now, fx.rsa)
	f.P12 = ""
	mustLoad(t, f, fx.now, fx.ec)
	f.PEMCert = ""
	if c, err := Load(f, fx.now); err != nil || c.Mode != ModeToken {
		t.Fatalf("token mode: %v, %v", c, err)
	}
	// A key without its certificate is a mistake, not a cue to fall
	// through to token mode.
	f.PEMKey = write(t, dir, "d.key", fx.ec.KeyPEM())
	if _, err := Load(f, fx.now); !errors.Is(err, ErrNoCertificate) || !strings.Contains(err.Error(), f.PEMKey) {
		t.Errorf("key alone: %v", err)
	}
}

func decodeJWTPart(t *testing.T, part string) map[string]any {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(part)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]any{}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestTokenModeSignsAnES256BearerWithKeyAndTeam(t *testing.T) {
	p8, key, err := testpki.NewP8Key()
	if err != nil {
		t.Fatal(err)
	}
	p := write(t, t.TempDir(), "AuthKey_ABCDEFGHIJ.p8", p8)
	c, err := Load(Files{P8: p, KeyID: "ABCDEFGHIJ", TeamID: "KLMNOPQRST", Topic: topic}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != ModeToken || c.Topic != topic || c.Certificate != nil || !c.NotAfter.IsZero() || len(c.Warnings) != 0 ||
		len(c.Sources) != 1 || c.Sources[0] != p {
		t.Fatalf("credential %+v", c)
	}
	if !c.Token.AuthKey.Equal(key) || c.Token.KeyID != "ABCDEFGHIJ" || c.Token.TeamID != "KLMNOPQRST" {
		t.Fatal("token fields")
	}
	parts := strings.Split(c.Token.Bearer, ".")
	if len(parts) != 3 {
		t.Fatalf("bearer %q is not a JWT", c.Token.Bearer)
	}
	if h := decodeJWTPart(t, parts[0]); h["alg"] != "ES256" || h["kid"] != "ABCDEFGHIJ" {
		t.Errorf("JWT header %v", h)
	}
	if cl := decodeJWTPart(t, parts[1]); cl["iss"] != "KLMNOPQRST" {
		t.Errorf("JWT claims %v", cl)
	}
	if ModeToken.String() != "token" || ModeCertificate.String() != "certificate" || Mode(9).String() != "Mode(9)" {
		t.Error("Mode.String")
	}
}

func TestTokenWarnings(t *testing.T) {
	p8, _, err := testpki.NewP8Key()
	if err != nil {
		t.Fatal(err)
	}
	p := write(t, t.TempDir(), "k.p8", p8)
	c, err := Load(Files{P8: p, KeyID: "ABC", TeamID: "KLMNOPQRSTUV", Topic: "com.apple.mail.nil"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(c.Warnings, "\n")
	for _, w := range []string{`key ID "ABC" is 3 characters`, `team ID "KLMNOPQRSTUV" is 12 characters`, `topic "com.apple.mail.nil" is 18 bytes`} {
		if !strings.Contains(got, w) {
			t.Errorf("warnings %q lack %q", got, w)
		}
	}
	if len(c.Warnings) != 3 {
		t.Errorf("%d warnings, want 3", len(c.Warnings))
	}
}

func TestTokenErrorsNameTheFileAndTheCause(t *testing.T) {
	dir := t.TempDir()
	good, _, err := testpki.NewP8Key()
	if err != nil {
		t.Fatal(err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384der, _ := x509.MarshalPKCS8PrivateKey(p384)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sec1, _ := x509.MarshalECPrivateKey(p256)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 1024) //nolint:gosec // size is irrelevant: it must be refused
	rsader, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	ok := Files{KeyID: "ABCDEFGHIJ", TeamID: "KLMNOPQRST", Topic: topic}
	for _, c := range []struct {
		name   string
		data   []byte // nil: file absent
		change func(*Files)
		wantIs []error
		wantIn []string
	}{
		{name: "absent", wantIs: []error{fs.ErrNotExist}, wantIn: []string{"read auth key P8"}},
		{name: "not PEM", data: []byte("MIGTAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBHkwdwIBAQQg"), wantIs: []error{ErrBadAuthKey}, wantIn: []string{"no PEM block"}},
		{name: "P-384", data: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p384der}), wantIs: []error{ErrBadAuthKey}, wantIn: []string{"P-384"}},
		{name: "SEC1 EC", data: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), wantIs: []error{ErrBadAuthKey}, wantIn: []string{`"EC PRIVATE KEY"`}},
		{name: "SEC1 labelled PKCS#8", data: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: sec1}), wantIs: []error{ErrBadAuthKey}},
		{name: "RSA", data: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: rsader}), wantIs: []error{ErrBadAuthKey}, wantIn: []string{"rsa.PrivateKey"}},
		{name: "a certificate", data: getFixture(t).ec.CertPEM(), wantIs: []error{ErrBadAuthKey}},
		{name: "no key ID", data: good, change: func(f *Files) { f.KeyID = "" }, wantIs: []error{ErrMissingSetting}, wantIn: []string{"key ID"}},
		{name: "no team ID", data: good, change: func(f *Files) { f.TeamID = "" }, wantIs: []error{ErrMissingSetting}, wantIn: []string{"team ID"}},
		{name: "no topic", data: good, change: func(f *Files) { f.Topic = "" }, wantIs: []error{ErrMissingSetting}, wantIn: []string{"topic"}},
		{name: "topic with space", data: good, change: func(f *Files) { f.Topic = "com.apple.mail. x" }, wantIn: []string{"spaces or control characters"}},
		{name: "topic with newline", data: good, change: func(f *Files) { f.Topic = topic + "\n" }, wantIn: []string{"spaces or control characters"}},
		{name: "everything at once", data: []byte("junk"), change: func(f *Files) { *f = Files{} },
			wantIs: []error{ErrMissingSetting, ErrBadAuthKey}, wantIn: []string{"key ID", "team ID", "topic", "no PEM block"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := ok
			if c.change != nil {
				c.change(&f)
			}
			f.P8 = filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_")+".p8")
			if c.data != nil {
				write(t, dir, filepath.Base(f.P8), c.data)
			}
			cred, err := Load(f, time.Now())
			if err == nil {
				t.Fatalf("loaded %+v", cred)
			}
			for _, is := range c.wantIs {
				if !errors.Is(err, is) {
					t.Errorf("error %q is not %v", err, is)
				}
			}
			for _, w := range append(c.wantIn, f.P8) {
				if !strings.Contains(err.Error(), strings.ReplaceAll(w, "P8", f.P8)) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			b, _ := pem.Decode(good)
			enc := base64.StdEncoding.EncodeToString(b.Bytes)
			assertClean(t, err.Error(), enc[30:50], "MIGTAgEAMBMGByqGSM49")
		})
	}
}

func readTestFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A corrupted iteration count must be refused at once, not run.
func TestP12IterationCap(t *testing.T) {
	fx := getFixture(t)
	der, err := testpki.P12Legacy(fx.ec, "pw")
	if err != nil {
		t.Fatal(err)
	}
	var pfx struct {
		Version  int
		AuthSafe asn1.RawValue
		MacData  struct {
			Mac        asn1.RawValue
			Salt       []byte
			Iterations int `asn1:"optional,default:1"` // 1 is left out, as DER wants
		}
	}
	if _, err := asn1.Unmarshal(der, &pfx); err != nil {
		t.Fatal(err)
	}
	pfx.MacData.Iterations = 1 << 30
	bad, err := asn1.Marshal(pfx)
	if err != nil {
		t.Fatal(err)
	}
	p := write(t, t.TempDir(), "slow.p12", bad)
	start := time.Now()
	_, err = Load(Files{P12: p, P12Password: "pw"}, fx.now)
	if err == nil || !strings.Contains(err.Error(), "1073741824 key-derivation iterations") || !strings.Contains(err.Error(), p) {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("refusal took %v", d)
	}
	if n := p12MaxIterations(der); n.Int64() != 2048 {
		t.Errorf("legacy file: %v iterations, want 2048 (PBE; its MAC uses 1)", n)
	}
	if n := p12MaxIterations([]byte("junk")); n.Sign() != 0 {
		t.Errorf("junk: %v", n)
	}
}

// DER is binary: a certificate whose signature happens to end in a byte
// that looks like whitespace must still load.
func TestDERTrailingWhitespaceByte(t *testing.T) {
	fx := getFixture(t)
	var leaf *testpki.Leaf
	for range 2000 {
		l, err := fx.ca.Issue(testpki.IssueOptions{UID: topic, KeyType: testpki.ECDSAP256})
		if err != nil {
			t.Fatal(err)
		}
		if strings.IndexByte(" \t\n\v\f\r", l.Cert.Raw[len(l.Cert.Raw)-1]) >= 0 {
			leaf = l
			break
		}
	}
	if leaf == nil {
		t.Fatal("no certificate ending in a whitespace byte in 2000 tries")
	}
	dir := t.TempDir()
	mustLoad(t, Files{PEMCert: write(t, dir, "aps.cer", leaf.Cert.Raw), PEMKey: write(t, dir, "k.pem", leaf.KeyPEM())}, fx.now, leaf)
}

// Apple marks push certificates with the environments they work in; a
// certificate for the other environment only is refused for the endpoint
// before APNs refuses every push with it.
func TestCertificateEnvironment(t *testing.T) {
	fx := getFixture(t)
	mark := func(oids ...asn1.ObjectIdentifier) []pkix.Extension {
		var out []pkix.Extension
		for _, o := range oids {
			out = append(out, pkix.Extension{Id: o, Value: []byte{0x05, 0x00}})
		}
		return out
	}
	dev, prod := asn1.ObjectIdentifier{1, 2, 840, 113635, 100, 6, 3, 1}, asn1.ObjectIdentifier{1, 2, 840, 113635, 100, 6, 3, 2}
	for _, c := range []struct {
		name      string
		ext       []pkix.Extension
		envs      []string
		okDev, ok bool
	}{
		{"development only", mark(dev), []string{EnvDevelopment}, true, false},
		{"production only", mark(prod), []string{EnvProduction}, false, true},
		{"universal", mark(dev, prod), []string{EnvDevelopment, EnvProduction}, true, true},
		{"unmarked", nil, nil, true, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			leaf, err := fx.ca.Issue(testpki.IssueOptions{UID: topic, KeyType: testpki.ECDSAP256, Extensions: c.ext,
				NotBefore: fx.now.Add(-time.Hour), NotAfter: fx.now.AddDate(1, 0, 0)})
			if err != nil {
				t.Fatal(err)
			}
			p := write(t, t.TempDir(), "push.pem", leaf.CertPEM(), leaf.KeyPEM())
			cred, err := Load(Files{PEMCert: p}, fx.now)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(cred.Environments, ",") != strings.Join(c.envs, ",") {
				t.Errorf("Environments = %v, want %v", cred.Environments, c.envs)
			}
			for env, want := range map[string]bool{EnvDevelopment: c.okDev, EnvProduction: c.ok, "https://127.0.0.1:1": true} {
				err := cred.CheckEnvironment(env)
				if (err == nil) != want {
					t.Errorf("CheckEnvironment(%s) = %v, want ok=%v", env, err, want)
				}
				if err != nil && (!errors.Is(err, ErrWrongEnvironment) || !strings.Contains(err.Error(), p) ||
					!strings.Contains(err.Error(), "apnsEndpoint: "+c.envs[0])) {
					t.Errorf("CheckEnvironment(%s) message: %v", env, err)
				}
			}
		})
	}
}

// A certificate outside its validity period still tells its topic and
// dates, so a daemon that starts without it can show them.
func TestValidityErrorKeepsTopicAndDates(t *testing.T) {
	fx := getFixture(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		leaf *testpki.Leaf
		is   error
	}{{fx.expired, ErrExpired}, {fx.future, ErrNotYetValid}} {
		_, err := Load(Files{PEMCert: write(t, dir, "c.pem", tc.leaf.CertPEM(), tc.leaf.KeyPEM())}, fx.now)
		var ve *ValidityError
		if !errors.As(err, &ve) || !errors.Is(err, tc.is) {
			t.Fatalf("error %v is not a ValidityError for %v", err, tc.is)
		}
		if ve.Topic != topic || !ve.NotAfter.Equal(tc.leaf.Cert.NotAfter) || !ve.NotBefore.Equal(tc.leaf.Cert.NotBefore) {
			t.Errorf("%+v", ve)
		}
	}
}
