package integration

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/diagnose"
	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
)

// runDiagnose runs `xapsd diagnose USER` against the running daemon, in
// text and with --json, and returns the exit code, the text and the
// report.
func runDiagnose(t *testing.T, dir, user string) (int, string, diagnose.Report) {
	t.Helper()
	cfg := filepath.Join(dir, "xapsd.yaml")
	code, text, errOut := run(t, "", "--config", cfg, "diagnose", user)
	if errOut != "" {
		t.Errorf("diagnose %s wrote to standard error: %s", user, errOut)
	}
	jcode, out, _ := run(t, "", "--config", cfg, "diagnose", "--json", user)
	var r diagnose.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("diagnose --json %s: %v\n%s", user, err, out)
	}
	if jcode != code {
		t.Errorf("diagnose %s: exit %d, with --json %d", user, code, jcode)
	}
	return code, text, r
}

// wantStep checks that diagnose names step as the one that fails (""
// for none), in the verdict line and the JSON, with the exit code to go
// with it, and says each of want.
func wantStep(t *testing.T, code int, text string, r diagnose.Report, step string, want ...string) {
	t.Helper()
	verdict := text[strings.LastIndex(text, "verdict: "):]
	switch {
	case step == "" && (code != 0 || !r.Verdict.OK || !strings.HasPrefix(verdict, "verdict: the server side works")):
		t.Errorf("want every step to pass: exit %d, %s", code, verdict)
	case step != "" && (code != 1 || r.Verdict.Step != step || !strings.HasPrefix(verdict, "verdict: "+step+" fails: ")):
		t.Errorf("want %s to fail: exit %d, %s", step, code, verdict)
	}
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Errorf("output lacks %q", w)
		}
	}
	if t.Failed() {
		t.Logf("xapsd diagnose:\n%s", text)
	}
}

// xapsd diagnose, against the built daemon pushing to the APNs stand-in
// with a real certificate, names the step where the chain breaks: no
// device registered, a device registered under another user name than
// mail is delivered to, pushes Apple refuses, and none.
func TestDiagnoseNamesTheFailingStep(t *testing.T) {
	e := newAPNsEnv(t, "")

	// All fine: registered, new mail, Apple took the push.
	e.register(t, "alice@example.org", acc, token(1))
	post(t, e.addr, "/notify", notifyBody("alice@example.org", "INBOX", "MessageNew"))
	if _, err := e.apns.WaitRequests(1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	e.d.waitLog("outcome=delivered", 5*time.Second)
	code, text, r := runDiagnose(t, e.dir, "Alice@Example.org")
	wantStep(t, code, text, r, "", "[OK]   daemon:", "[OK]   registrations: 1 device(s) registered for alice@example.org",
		"INBOX [MessageNew]: pushed now", "last push", ": delivered 200", "APNs: connected")
	if len(r.Devices) != 1 || r.Devices[0].DeviceToken != token(1) || r.Devices[0].LastPush == nil || r.Daemon.DaysLeft == nil || *r.Daemon.DaysLeft < 360 {
		t.Errorf("report %+v", r)
	}

	// No device: carol's mail arrives, nothing is registered.
	post(t, e.addr, "/notify", notifyBody("carol@example.org", "INBOX", "MessageNew"))
	code, text, r = runDiagnose(t, e.dir, "carol@example.org")
	wantStep(t, code, text, r, diagnose.StepRegistrations, "no device registered for carol@example.org", "XAPPLEPUSHSERVICE",
		"INBOX [MessageNew]: no device registered for this user name")

	// The user-name mismatch: the phone registered as "bob" (the IMAP
	// login), mail for bob@example.org (the delivery address). Both names
	// lead to it.
	e.register(t, "bob", acc, token(2))
	post(t, e.addr, "/notify", notifyBody("bob@example.org", "INBOX", "MessageNew"))
	code, text, r = runDiagnose(t, e.dir, "bob")
	wantStep(t, code, text, r, diagnose.StepEvents, "no /notify for bob, but for bob@example.org, which has no device", "auth_username_format", "xaps_user_lookup")
	code, text, r = runDiagnose(t, e.dir, "bob@example.org")
	wantStep(t, code, text, r, diagnose.StepRegistrations, "no device registered for bob@example.org, but under bob (1)", "auth_username_format")

	// Pushes failing at Apple: the answer and what to check.
	e.apns.SetResponder(func(fakeapns.Request) fakeapns.Response {
		return fakeapns.Response{Status: 400, Reason: "BadDeviceToken"}
	})
	e.register(t, "dave@example.org", acc, token(3))
	post(t, e.addr, "/notify", notifyBody("dave@example.org", "INBOX", "MessageNew"))
	if !e.d.waitLog("reason=BadDeviceToken", 5*time.Second) {
		t.Fatal("no BadDeviceToken answer in the log")
	}
	code, text, r = runDiagnose(t, e.dir, "dave@example.org")
	wantStep(t, code, text, r, diagnose.StepPushes, "pushes fail at Apple", "failed 400 BadDeviceToken", "apnsEndpoint must be production")
}

// Through a real Dovecot: iOS Mail's registration over IMAP, a delivery
// over LMTP, the push; diagnose finds every step passing.
func TestE2EDiagnoseAfterADelivery(t *testing.T) { forEachDovecot(t, testE2EDiagnoseAfterADelivery) }

func testE2EDiagnoseAfterADelivery(t *testing.T, dv dovecotKind) {
	e := newE2E(t, dv, "")
	if _, ok := imapLogin(t, e.dc.imap, "alice").registerLikeIOS(acc, token(4), "INBOX"); !ok {
		t.Fatal("registration failed")
	}
	deliver(t, e.dc.lmtp, "alice@example.org")
	if _, err := e.apns.WaitRequests(1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	e.d.waitLog("outcome=delivered", 5*time.Second)
	code, text, r := runDiagnose(t, e.dir, "alice")
	wantStep(t, code, text, r, "", "INBOX [MessageNew]: pushed now", ": delivered 200")
}
