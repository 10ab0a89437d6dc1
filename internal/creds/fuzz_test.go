package creds

import (
	"crypto"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fuzzNow lies inside the validity of the committed seeds (2020–2099).
var fuzzNow = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// checkCertCredential holds for every credential Load hands out, however
// odd the input was.
func checkCertCredential(t *testing.T, c *Credential) {
	t.Helper()
	if c.Mode != ModeCertificate || c.Topic == "" || c.Certificate == nil || c.Certificate.Leaf == nil {
		t.Fatalf("incomplete credential %+v", c)
	}
	k, ok := c.Certificate.PrivateKey.(crypto.Signer)
	if !ok || !keyMatches(c.Certificate.Leaf, k) {
		t.Fatal("loaded a key that does not match the leaf")
	}
	if fuzzNow.Before(c.Certificate.Leaf.NotBefore) || fuzzNow.After(c.Certificate.Leaf.NotAfter) {
		t.Fatal("loaded a certificate outside its validity")
	}
}

// FuzzCertFromPEM feeds arbitrary bytes to the PEM path, with the key
// either in the same data (empty keyData) or in a second file.
func FuzzCertFromPEM(f *testing.F) {
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"), []byte{})
	f.Add([]byte{0x30, 0x82, 0x01}, []byte("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, certData, keyData []byte) {
		keyPath := ""
		if len(keyData) > 0 {
			keyPath = "fuzz.key"
		}
		c, err := certFromPEM(certData, keyData, "fuzz.pem", keyPath, fuzzNow)
		if err != nil {
			return
		}
		checkCertCredential(t, c)
	})
}

// FuzzCertFromP12 feeds arbitrary bytes and passwords to the PKCS#12 path.
func FuzzCertFromP12(f *testing.F) {
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x03}, "")
	f.Fuzz(func(t *testing.T, data []byte, password string) {
		c, err := certFromP12(data, password, "fuzz.p12", fuzzNow)
		if err != nil {
			return
		}
		checkCertCredential(t, c)
	})
}

// FuzzAuthKey feeds arbitrary bytes to the .p8 parser.
func FuzzAuthKey(f *testing.F) {
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := authKey(data, "fuzz.p8")
		if err != nil {
			return
		}
		if k.Curve.Params().Name != "P-256" {
			t.Fatalf("accepted curve %s", k.Curve.Params().Name)
		}
	})
}

// TestFuzzSeedsLoad keeps the committed corpus meaningful: the good seeds
// must reach the success path, where the fuzz invariants are checked.
func TestFuzzSeedsLoad(t *testing.T) {
	read := func(target, name string) [][]byte {
		raw, err := os.ReadFile(filepath.Join("testdata", "fuzz", target, name))
		if err != nil {
			t.Fatal(err)
		}
		var out [][]byte
		for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n")[1:] {
			i, j := strings.IndexByte(line, '('), strings.LastIndexByte(line, ')')
			s, err := strconv.Unquote(line[i+1 : j])
			if err != nil {
				t.Fatalf("%s/%s: %v", target, name, err)
			}
			out = append(out, []byte(s))
		}
		return out
	}
	for _, name := range []string{"rsa-combined", "ec-separate-pkcs8", "der-cert-sec1-key"} {
		a := read("FuzzCertFromPEM", name)
		keyPath := ""
		if len(a[1]) > 0 {
			keyPath = "k"
		}
		c, err := certFromPEM(a[0], a[1], "c", keyPath, fuzzNow)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		checkCertCredential(t, c)
	}
	for _, name := range []string{"legacy-rsa", "modern-ec"} {
		a := read("FuzzCertFromP12", name)
		c, err := certFromP12(a[0], string(a[1]), "p", fuzzNow)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		checkCertCredential(t, c)
	}
	if _, err := authKey(read("FuzzAuthKey", "p8")[0], "p8"); err != nil {
		t.Errorf("p8 seed: %v", err)
	}
}
