package creds

import (
	"encoding/asn1"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

func openssl(t *testing.T, args ...string) []byte {
	t.Helper()
	bin, err := exec.LookPath("openssl")
	if err != nil {
		// Deliberately not a skip: these are the files users really have,
		// and CI machines ship OpenSSL.
		t.Fatalf("openssl is not in PATH (install the openssl package): %v", err)
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// TestOpenSSLFiles loads bundles made by the openssl command line, the way
// admins convert their push certificates.
func TestOpenSSLFiles(t *testing.T) {
	fx := getFixture(t)
	t.Logf("%s", strings.TrimSpace(string(openssl(t, "version"))))
	dir := t.TempDir()
	certFile := write(t, dir, "cert.pem", fx.rsa.CertPEM())
	keyFile := write(t, dir, "key.pem", fx.rsa.KeyPEM())
	caFile := write(t, dir, "ca.pem", fx.ca.CertPEM())
	sha1 := asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
	sha256 := asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	for _, c := range []struct {
		name     string
		args     []string
		password string
		mac      asn1.ObjectIdentifier
	}{
		{"OpenSSL 3 default (AES-256, SHA-256 MAC)", nil, "s3cret", sha256},
		{"OpenSSL 3 default, empty password", nil, "", sha256},
		{"OpenSSL 3 -legacy (RC2, SHA-1 MAC)", []string{"-legacy"}, "s3cret", sha1},
		{"3DES like OpenSSL 1.x -descert", []string{"-certpbe", "PBE-SHA1-3DES", "-keypbe", "PBE-SHA1-3DES", "-macalg", "sha1"}, "s3cret", sha1},
	} {
		t.Run(c.name, func(t *testing.T) {
			p12 := filepath.Join(t.TempDir(), "push.p12")
			args := append([]string{"pkcs12", "-export", "-in", certFile, "-inkey", keyFile, "-certfile", caFile,
				"-name", "Apple Push Services", "-out", p12, "-passout", "pass:" + c.password}, c.args...)
			openssl(t, args...)
			der := readTestFile(t, p12)
			got, err := testpki.P12MAC(der)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Equal(c.mac) {
				t.Fatalf("openssl wrote MAC %v, want %v; the case does not test what it says", got, c.mac)
			}
			cred := mustLoad(t, Files{P12: p12, P12Password: c.password}, fx.now, fx.rsa)
			if len(cred.Certificate.Certificate) != 2 {
				t.Errorf("%d certificates, want leaf and CA", len(cred.Certificate.Certificate))
			}
			if c.password != "" {
				if _, err := Load(Files{P12: p12, P12Password: "not it"}, fx.now); err == nil {
					t.Error("wrong password accepted")
				}
			}

			// The usual conversion to one PEM file, with "Bag Attributes"
			// text between the blocks and the key first.
			combined := filepath.Join(t.TempDir(), "push.pem")
			read := []string{"pkcs12", "-in", p12, "-nodes", "-out", combined, "-passin", "pass:" + c.password}
			if len(c.args) > 0 && c.args[0] == "-legacy" {
				read = append(read, "-legacy") // RC2 lives in OpenSSL 3's legacy provider
			}
			openssl(t, read...)
			mustLoad(t, Files{PEMCert: combined}, fx.now, fx.rsa)
		})
	}
}

// TestOpenSSLKeyForms loads keys rewritten by openssl into each encoding.
func TestOpenSSLKeyForms(t *testing.T) {
	fx := getFixture(t)
	dir := t.TempDir()
	certFile := write(t, dir, "cert.pem", fx.ec.CertPEM())
	keyFile := write(t, dir, "key.pem", fx.ec.KeyPEM())
	for _, c := range []struct {
		name string
		args []string
		head string
	}{
		{"pkey (PKCS#8)", []string{"pkey", "-in", keyFile}, "-----BEGIN PRIVATE KEY-----"},
		{"ec (SEC1)", []string{"ec", "-in", keyFile}, "-----BEGIN EC PRIVATE KEY-----"},
		{"ecparam then key", nil, "-----BEGIN EC PARAMETERS-----"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "k.pem")
			if c.args == nil {
				params := openssl(t, "ecparam", "-name", "prime256v1")
				key := openssl(t, "ec", "-in", keyFile)
				write(t, filepath.Dir(out), "k.pem", params, key)
			} else {
				openssl(t, append(c.args, "-out", out)...)
			}
			if got := string(readTestFile(t, out)); !strings.HasPrefix(got, c.head) {
				t.Fatalf("openssl wrote %.40q, want %q", got, c.head)
			}
			mustLoad(t, Files{PEMCert: certFile, PEMKey: out}, fx.now, fx.ec)
		})
	}
}

func TestOpenSSLRSAKeyForms(t *testing.T) {
	fx := getFixture(t)
	dir := t.TempDir()
	certFile := write(t, dir, "cert.pem", fx.rsa.CertPEM())
	keyFile := write(t, dir, "key.pem", fx.rsa.KeyPEM())
	for _, c := range []struct {
		args []string
		head string
	}{
		{[]string{"pkey", "-in", keyFile}, "-----BEGIN PRIVATE KEY-----"},
		{[]string{"rsa", "-in", keyFile, "-traditional"}, "-----BEGIN RSA PRIVATE KEY-----"},
	} {
		out := filepath.Join(t.TempDir(), "k.pem")
		openssl(t, append(c.args, "-out", out)...)
		if got := string(readTestFile(t, out)); !strings.HasPrefix(got, c.head) {
			t.Fatalf("openssl wrote %.40q, want %q", got, c.head)
		}
		mustLoad(t, Files{PEMCert: certFile, PEMKey: out}, fx.now, fx.rsa)
	}
}

// TestP12Iterations checks that the iteration counts are found where
// each exporter puts them, so the cap in front of go-pkcs12 works.
func TestP12Iterations(t *testing.T) {
	fx := getFixture(t)
	dir := t.TempDir()
	certFile := write(t, dir, "cert.pem", fx.ec.CertPEM())
	keyFile := write(t, dir, "key.pem", fx.ec.KeyPEM())
	for _, c := range []struct {
		name string
		args []string
		want int64
	}{
		{"encryption only (-nomaciter -iter 7000)", []string{"-nomaciter", "-iter", "7000"}, 7000},
		{"MAC only (-noiter)", []string{"-noiter"}, 2048},
		{"legacy PBE, key bag (-nomaciter -iter 3000 3DES)", []string{"-nomaciter", "-iter", "3000", "-certpbe", "NONE", "-keypbe", "PBE-SHA1-3DES", "-macalg", "sha1"}, 3000},
	} {
		p12 := filepath.Join(t.TempDir(), "i.p12")
		openssl(t, append([]string{"pkcs12", "-export", "-in", certFile, "-inkey", keyFile, "-out", p12, "-passout", "pass:pw"}, c.args...)...)
		der := readTestFile(t, p12)
		if got := p12MaxIterations(der); !got.IsInt64() || got.Int64() != c.want {
			t.Errorf("%s: found %v iterations, want %d", c.name, got, c.want)
		}
		mustLoad(t, Files{P12: p12, P12Password: "pw"}, fx.now, fx.ec)
	}
}
