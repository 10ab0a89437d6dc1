package ctl

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/apns"
	"github.com/xapsd/xapsd/internal/diagnose"
	"github.com/xapsd/xapsd/internal/filestore"
	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/registry/registrytest"
	"github.com/xapsd/xapsd/internal/statedir"
)

type fakePusher struct{ pushed []registry.Key }

func (f *fakePusher) PushNow(_ context.Context, k registry.Key) apns.Result {
	f.pushed = append(f.pushed, k)
	if k.DeviceToken == "dead" {
		return apns.Result{Device: k, Outcome: apns.Removed, Status: 410, Reason: "Unregistered"}
	}
	return apns.Result{Device: k, Outcome: apns.Delivered, Status: 200, ApnsID: "id-" + k.AccountID}
}

// fakeDiagnoser answers with the user it was asked about.
type fakeDiagnoser struct{}

func (fakeDiagnoser) Diagnose(_ context.Context, user string) diagnose.Report {
	return diagnose.Report{User: user, Verdict: diagnose.Verdict{Step: diagnose.StepRegistrations, Text: "no device registered for " + user}}
}

func setup(t *testing.T) (*Client, *registry.Registry, *fakePusher, string) {
	t.Helper()
	dir := t.TempDir()
	reg := registrytest.Open(t, registrytest.Defaults())
	for _, g := range []registry.Registration{
		{Key: registry.Key{User: "alice", AccountID: "A1", DeviceToken: "aa"}, Mailboxes: []string{"INBOX"}},
		{Key: registry.Key{User: "alice", AccountID: "A2", DeviceToken: "dead"}, Mailboxes: []string{"INBOX"}},
		{Key: registry.Key{User: "bob", AccountID: "B1", DeviceToken: "bb"}, Mailboxes: []string{"INBOX"}},
	} {
		if err := reg.Register(context.Background(), g); err != nil {
			t.Fatal(err)
		}
	}
	p := &fakePusher{}
	path := statedir.New(filepath.Join(dir, "database.json")).AdminSocket()
	s, err := Listen(path, reg, p, fakeDiagnoser{})
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	return NewClient(path), reg, p, path
}

func TestSocketIsPrivateAndExclusive(t *testing.T) {
	_, reg, p, path := setup(t)
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket %v mode %v", err, st.Mode())
	}
	if _, err := Listen(path, reg, p, fakeDiagnoser{}); err == nil || !strings.Contains(err.Error(), "another xapsd") {
		t.Errorf("second daemon on the same folder: %v", err)
	}
}

func TestDevicesListAndRemove(t *testing.T) {
	c, reg, _, _ := setup(t)
	all, err := c.Devices("")
	if err != nil || len(all) != 3 {
		t.Fatalf("Devices() = %d, %v", len(all), err)
	}
	alice, _ := c.Devices("ALICE")
	if len(alice) != 2 || alice[0].User != "alice" {
		t.Fatalf("Devices(alice) = %+v", alice)
	}
	removed, err := c.Remove("alice", "dead")
	if err != nil || len(removed) != 1 || removed[0].AccountID != "A2" {
		t.Fatalf("Remove by token = %+v, %v", removed, err)
	}
	removed, err = c.Remove("alice", "A1")
	if err != nil || len(removed) != 1 {
		t.Fatalf("Remove by account = %+v, %v", removed, err)
	}
	if reg.Lookup("alice", "INBOX", false).KnownUser {
		t.Error("alice still registered")
	}
	if _, err := c.Remove("", ""); err == nil {
		t.Error("remove without a user accepted")
	}
}

func TestTestPushReportsEachDevice(t *testing.T) {
	c, _, p, _ := setup(t)
	res, err := c.TestPush("alice")
	if err != nil || len(res) != 2 || len(p.pushed) != 2 {
		t.Fatalf("TestPush = %+v, %v", res, err)
	}
	for _, r := range res {
		switch r.DeviceToken {
		case "aa":
			if r.Status != 200 || r.Outcome != "delivered" || r.ApnsID != "id-A1" {
				t.Errorf("aa: %+v", r)
			}
		case "dead":
			if r.Status != 410 || r.Reason != "Unregistered" || r.Outcome != "removed" {
				t.Errorf("dead: %+v", r)
			}
		}
	}
}

// The report travels over the socket whole.
func TestDiagnoseReportCrossesTheSocketWhole(t *testing.T) {
	c, _, _, _ := setup(t)
	r, err := c.Diagnose("carol@example.org")
	if err != nil || r.User != "carol@example.org" || r.Verdict.Step != diagnose.StepRegistrations || r.Verdict.Text != "no device registered for carol@example.org" {
		t.Errorf("Diagnose = %+v, %v", r, err)
	}
	if _, err := c.Diagnose(""); err == nil {
		t.Error("diagnose without a user accepted")
	}
}

func TestImportOverTheSocketAddsOldFormatRegistrations(t *testing.T) {
	c, reg, _, _ := setup(t)
	file := `{"Users":{"carol":{"Accounts":{"C1":{"DeviceToken":"cc","Mailboxes":["INBOX"],"RegistrationTime":"` +
		time.Now().Add(-time.Hour).Format(time.RFC3339Nano) + `"}}}}}`
	found, imported, err := c.Import([]byte(file))
	if err != nil || found != 1 || imported != 1 {
		t.Fatalf("Import = %d %d %v", found, imported, err)
	}
	if !reg.Lookup("carol", "INBOX", false).KnownUser {
		t.Error("carol not imported")
	}
	if _, _, err := c.Import([]byte("not json")); err == nil || !strings.Contains(err.Error(), "not a xapsd database") {
		t.Errorf("bad file: %v", err)
	}
}

func TestClientWithoutDaemon(t *testing.T) {
	c := NewClient(statedir.New(filepath.Join(t.TempDir(), "database.json")).AdminSocket())
	if _, err := c.Devices(""); err == nil || !strings.Contains(err.Error(), "is it running") {
		t.Errorf("err = %v", err)
	}
}

func TestExportRoundTrip(t *testing.T) {
	c, reg, _, _ := setup(t)
	var out bytes.Buffer
	if err := c.Export(&out); err != nil {
		t.Fatal(err)
	}
	regs, err := filestore.ParseFile(out.Bytes())
	if err != nil {
		t.Fatalf("the export does not parse as a registry file: %v\n%s", err, out.String())
	}
	if want := reg.List(""); len(regs) != len(want) || len(want) == 0 {
		t.Fatalf("export has %d registrations, the registry %d", len(regs), len(want))
	}
	// Imported into another registry, it gives the same registrations.
	c2, reg2, _, _ := setup(t)
	for _, g := range reg2.List("") {
		reg2.RemoveMatching(context.Background(), g.User, "")
	}
	if _, imported, err := c2.Import(out.Bytes()); err != nil || imported != len(regs) {
		t.Fatalf("importing the export: %d %v", imported, err)
	}
	if a, b := reg.List(""), reg2.List(""); len(a) != len(b) || a[0].DeviceToken != b[0].DeviceToken {
		t.Errorf("after export and import: %v, want %v", b, a)
	}
}
