package appleid

import (
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/applecerts"
	"github.com/xapsd/xapsd/internal/creds"
	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

// legacySet is the five certificates an old xapsd kept in database.json.
type legacySet struct {
	certs [len(services)]*x509.Certificate
	keys  [len(services)]*rsa.PrivateKey
	topic string // of the mail certificate
}

// issueLegacy issues five certificates from the stand-in (so it knows
// their serials for a later renewal) with keys from the fixture pool
// starting at keyBase. mailNotAfter zero means 200 days from now.
func issueLegacy(t *testing.T, e *env, mailNotAfter time.Time, keyBase int) *legacySet {
	t.Helper()
	now := e.now()
	var l legacySet
	for i := range services {
		l.keys[i] = e.fx.keys[(keyBase+i)%len(e.fx.keys)]
		end := now.Add(200 * 24 * time.Hour)
		if i == mailNo && !mailNotAfter.IsZero() {
			end = mailNotAfter
		}
		c, err := e.stub.issueUntil(i, &l.keys[i].PublicKey, "", end.AddDate(-1, 0, 0), end)
		if err != nil {
			t.Fatal(err)
		}
		l.certs[i] = c
	}
	l.topic = testpki.SubjectUID(l.certs[mailNo])
	return &l
}

// databaseJSON is the old daemon's database.json as it wrote it
// (docs/protocol.md#legacy-database): pretty-printed, registrations and
// AppleCerts, each certificate as Go's JSON of a tls.Certificate and each
// key as base64 PKCS#1.
func (l *legacySet) databaseJSON(t *testing.T) []byte {
	t.Helper()
	type account struct {
		DeviceToken      string
		Mailboxes        []string
		RegistrationTime time.Time
	}
	type user struct{ Accounts map[string]account }
	var sigs []tls.Certificate
	var keys [][]byte
	for i := range services {
		sigs = append(sigs, tls.Certificate{Certificate: [][]byte{l.certs[i].Raw}})
		keys = append(keys, x509.MarshalPKCS1PrivateKey(l.keys[i]))
	}
	db := struct {
		Users      map[string]user
		AppleCerts struct {
			Signature []tls.Certificate
			Keys      [][]byte
		}
	}{Users: map[string]user{"alice@example.com": {Accounts: map[string]account{
		"0715A26B-CA09-4730-A419-793000CA982E": {DeviceToken: strings.Repeat("ab", 32), Mailboxes: []string{"INBOX", "Notes"},
			RegistrationTime: time.Date(2023, 4, 29, 14, 36, 40, 413465243, time.FixedZone("", -5*3600))},
	}}}}
	db.AppleCerts.Signature, db.AppleCerts.Keys = sigs, keys
	data, err := json.MarshalIndent(db, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// json returns the AppleCerts object as the registry hands it over.
func (l *legacySet) json(t *testing.T) json.RawMessage {
	t.Helper()
	var f struct{ AppleCerts json.RawMessage }
	if err := json.Unmarshal(l.databaseJSON(t), &f); err != nil {
		t.Fatal(err)
	}
	return f.AppleCerts
}

func TestImportLegacy(t *testing.T) {
	e := newEnv(t, stubNormal)
	l := issueLegacy(t, e, time.Time{}, 0)
	raw := l.json(t)
	// The layout is the one docs/protocol.md#legacy-applecerts describes, nulls and all.
	for _, s := range []string{`"Signature": [`, `"PrivateKey": null`, `"Leaf": null`, `"Keys": [`} {
		if !strings.Contains(string(l.databaseJSON(t)), s) {
			t.Fatalf("fixture database.json lacks %s", s)
		}
	}

	res, err := applecerts.ImportLegacy(raw, e.dir, e.now())
	if err != nil {
		t.Fatal(err)
	}
	if !res.Mail || !slices.Equal(res.Stored, []string{"calendar", "contact", "mail", "mgmt", "alerts"}) || len(res.Notes) != 0 {
		t.Fatalf("result %+v", res)
	}
	checkMode(t, e.dir, 0o700)
	st := store{dir: e.dir}
	for _, svc := range services {
		h, err := st.load(svc)
		if err != nil {
			t.Fatal(err)
		}
		if !h.Cert.Equal(l.certs[svc.No]) || !h.Key.Equal(l.keys[svc.No]) {
			t.Errorf("%s: stored the wrong certificate or key", svc.Name)
		}
		checkMode(t, st.servicePath(svc), 0o600)
	}
	c, err := creds.Load(creds.Files{PEMCert: filepath.Join(e.dir, "mail.pem")}, e.now())
	if err != nil || c.Topic != l.topic {
		t.Fatalf("mail.pem as a credential: %v, %v", c, err)
	}

	// Idempotent: a second start changes nothing.
	before, _ := os.ReadFile(filepath.Join(e.dir, "mail.pem"))
	res, err = applecerts.ImportLegacy(raw, e.dir, e.now())
	if err != nil || res.Mail || len(res.Stored) != 0 || len(res.Notes) != 5 || !strings.Contains(res.Notes[2], "already holds") {
		t.Fatalf("second import: %+v, %v", res, err)
	}
	after, _ := os.ReadFile(filepath.Join(e.dir, "mail.pem"))
	if string(before) != string(after) {
		t.Error("second import rewrote mail.pem")
	}

	// The manager takes over: no request while the certificate is good.
	m := e.manager(t)
	if err := m.Status(); err != nil {
		t.Errorf("Status = %v", err)
	}
	if _, last := runUntilIdle(t, e, m); len(e.stub.seen()) != 0 || last.kind != planRenew ||
		!last.at.Equal(l.certs[mailNo].NotAfter.Add(-30*24*time.Hour)) {
		t.Errorf("%d requests, plan %v at %v", len(e.stub.seen()), last.kind, last.at)
	}
}

// TestImportThenRenew: an imported certificate close to its end is renewed
// with its own key and serial, and keeps its topic.
func TestImportThenRenew(t *testing.T) {
	e := newEnv(t, stubNormal)
	l := issueLegacy(t, e, e.now().Add(20*24*time.Hour), 0)
	if _, err := applecerts.ImportLegacy(l.json(t), e.dir, e.now()); err != nil {
		t.Fatal(err)
	}
	got, _ := runUntilIdle(t, e, e.manager(t))
	reqs := e.stub.seen()
	if len(reqs) != 1 || reqs[0].Kind != "renew" || len(got) != 1 {
		t.Fatalf("%d requests, %d credentials", len(reqs), len(got))
	}
	for _, svc := range services {
		if reqs[0].Serials[svc.No] != l.certs[svc.No].SerialNumber.Text(16) || !reqs[0].Keys[svc.No].Equal(&l.keys[svc.No].PublicKey) {
			t.Errorf("%s: renewal did not reuse the imported key and serial", svc.Name)
		}
	}
	if got[0].Topic != l.topic {
		t.Errorf("topic %q, want %q", got[0].Topic, l.topic)
	}
}

// TestImportOnlyMail: an old database with only the mail entry; a
// renewal then sends fresh keys without serials for the other four.
func TestImportOnlyMail(t *testing.T) {
	e := newEnv(t, stubNormal)
	// Keys from the far end of the pool: the fresh ones come from the start.
	l := issueLegacy(t, e, e.now().Add(10*24*time.Hour), 5)
	var raw map[string][]json.RawMessage
	if err := json.Unmarshal(l.json(t), &raw); err != nil {
		t.Fatal(err)
	}
	for i := range services {
		if i != mailNo {
			raw["Signature"][i] = json.RawMessage("null")
			raw["Keys"][i] = json.RawMessage(`""`)
		}
	}
	only, _ := json.Marshal(raw)
	res, err := applecerts.ImportLegacy(only, e.dir, e.now())
	if err != nil || !res.Mail || !slices.Equal(res.Stored, []string{"mail"}) {
		t.Fatalf("import: %+v, %v", res, err)
	}
	got, _ := runUntilIdle(t, e, e.manager(t))
	reqs := e.stub.seen()
	if len(reqs) != 1 || reqs[0].Kind != "renew" || len(got) != 1 {
		t.Fatalf("%d requests, %d credentials", len(reqs), len(got))
	}
	for _, svc := range services {
		_, hasSerial := reqs[0].Serials[svc.No]
		if hasSerial != (svc.No == mailNo) {
			t.Errorf("%s: serial sent = %v", svc.Name, hasSerial)
		}
	}
	checkIssued(t, e, reqs[0])
}

func TestImportLegacySkipsAndErrors(t *testing.T) {
	e := newEnv(t, stubNormal)
	now := e.now()

	t.Run("expired mail", func(t *testing.T) {
		l := issueLegacy(t, e, now.Add(-time.Hour), 0)
		dir := filepath.Join(t.TempDir(), "s")
		res, err := applecerts.ImportLegacy(l.json(t), dir, now)
		if err != nil || res.Mail || len(res.Stored) != 4 {
			t.Fatalf("%+v, %v", res, err)
		}
		if len(res.Notes) != 1 || !strings.Contains(res.Notes[0], "mail certificate of the old database not imported: it expired on "+
			l.certs[mailNo].NotAfter.UTC().Format(time.RFC3339)) {
			t.Errorf("notes %q", res.Notes)
		}
		if exists(filepath.Join(dir, "mail.pem")) {
			t.Error("expired certificate stored")
		}
	})
	t.Run("newer replaces older", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "s")
		old := issueLegacy(t, e, now.Add(5*24*time.Hour), 0)
		if _, err := applecerts.ImportLegacy(old.json(t), dir, now); err != nil {
			t.Fatal(err)
		}
		newer := issueLegacy(t, e, now.Add(300*24*time.Hour), 5)
		res, err := applecerts.ImportLegacy(newer.json(t), dir, now)
		if err != nil || !res.Mail {
			t.Fatalf("%+v, %v", res, err)
		}
		h, _ := store{dir: dir}.load(services[mailNo])
		if !h.Cert.Equal(newer.certs[mailNo]) {
			t.Error("the newer certificate did not replace the older one")
		}
		// And the older one does not come back.
		if res, _ := applecerts.ImportLegacy(old.json(t), dir, now); res.Mail {
			t.Error("an older certificate replaced a newer one")
		}
	})
	t.Run("mail key mismatch", func(t *testing.T) {
		l := issueLegacy(t, e, time.Time{}, 0)
		l.keys[mailNo] = l.keys[0]
		_, err := applecerts.ImportLegacy(l.json(t), filepath.Join(t.TempDir(), "s"), now)
		if err == nil || !strings.Contains(err.Error(), "mail certificate: its key does not belong to it") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("broken calendar is a note", func(t *testing.T) {
		l := issueLegacy(t, e, time.Time{}, 0)
		l.keys[0] = l.keys[1]
		res, err := applecerts.ImportLegacy(l.json(t), filepath.Join(t.TempDir(), "s"), now)
		if err != nil || !res.Mail || len(res.Notes) != 1 || !strings.HasPrefix(res.Notes[0], "calendar certificate not imported") {
			t.Errorf("%+v, %v", res, err)
		}
	})
	for _, raw := range []string{"", "null", " ", `{"Signature": [], "Keys": []}`, `{}`} {
		dir := filepath.Join(t.TempDir(), "s")
		res, err := applecerts.ImportLegacy(json.RawMessage(raw), dir, now)
		if err != nil || res.Mail || len(res.Stored) != 0 {
			t.Errorf("%q: %+v, %v", raw, res, err)
		}
		if exists(dir) {
			t.Errorf("%q: state folder created for nothing", raw)
		}
	}
	for _, raw := range []string{`[1]`, `{"Signature": "x"}`, `{"Signature": [{"Certificate": ["!!"]}]}`} {
		if _, err := applecerts.ImportLegacy(json.RawMessage(raw), filepath.Join(t.TempDir(), "s"), now); err == nil {
			t.Errorf("%q: no error", raw)
		}
	}
	// A certificate that is not a certificate, in the mail slot.
	bad := `{"Signature": [null, null, {"Certificate": ["AAAA"]}], "Keys": ["", "", "AAAA"]}`
	if _, err := applecerts.ImportLegacy(json.RawMessage(bad), filepath.Join(t.TempDir(), "s"), now); err == nil ||
		!strings.Contains(err.Error(), "mail certificate") {
		t.Errorf("bad mail entry: %v", err)
	}
}
