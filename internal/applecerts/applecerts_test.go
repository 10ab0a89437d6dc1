package applecerts

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

func exists(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Stat(path)
	return err == nil
}

// A certificate is stored with its key in one private file and loads back;
// a file whose key is another's does not load, and a missing one says so.
func TestCertificatesAreStoredWithTheirKeyAndLoadBack(t *testing.T) {
	ca, err := testpki.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(testpki.IssueOptions{UID: "com.apple.mail.XServer.11111111-2222-4333-8444-555555555555", KeyType: testpki.RSA2048})
	if err != nil {
		t.Fatal(err)
	}
	key := leaf.Key.(*rsa.PrivateKey)
	f := In(filepath.Join(t.TempDir(), "apple-push"))
	mail := Services[MailNo]
	if _, err := f.Load(mail); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load of nothing = %v, want fs.ErrNotExist", err)
	}
	if err := f.Ensure(); err != nil {
		t.Fatal(err)
	}
	if err := f.Save(mail, leaf.Cert, key); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(f.Mail()); err != nil || st.Mode().Perm() != FileMode || f.Mail() != filepath.Join(f.Dir(), "mail.pem") {
		t.Fatalf("%s: %v, %v", f.Mail(), st, err)
	}
	h, err := f.Load(mail)
	if err != nil || !h.Cert.Equal(leaf.Cert) || !h.Key.Equal(key) {
		t.Fatalf("Load = %+v, %v", h, err)
	}
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	if err := f.Save(mail, leaf.Cert, other); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Load(mail); err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Errorf("Load of a certificate with another's key = %v", err)
	}
}

// FuzzImportLegacy: an old database.json's AppleCerts never panics the
// import, and what it reports matches what it did.
func FuzzImportLegacy(f *testing.F) {
	f.Add([]byte(`{"Signature": [], "Keys": []}`))
	f.Add([]byte(`{"Signature": [null, null, {"Certificate": ["AAAA"], "PrivateKey": null, "Leaf": null}], "Keys": ["", "", "AAAA"]}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"Signature": [{"Certificate": []}], "Keys": [null]}`))
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, in []byte) {
		dir := filepath.Join(t.TempDir(), "s")
		res, err := ImportLegacy(json.RawMessage(in), dir, now)
		if res.Mail != slices.Contains(res.Stored, "mail") {
			t.Fatalf("result %+v, %v", res, err)
		}
		if len(res.Stored) == 0 && exists(t, dir) {
			t.Fatal("state folder created with nothing to store")
		}
	})
}
