package daemon_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
	"github.com/xapsd/xapsd/internal/testutil/testpki"
	"github.com/xapsd/xapsd/internal/testutil/xapsdtest"
)

// The whole daemon in this process against the HTTP/2 stand-in for APNs
// (xapsdtest): what a push looks like, when it goes, what Apple's answers
// do, reloads and restarts.

// apnsEnv is a daemon pushing with a real client certificate to the
// stand-in for Apple.
type apnsEnv struct {
	*xapsdtest.APNsSetup
	d *xapsdtest.Daemon
}

func newAPNsEnv(t *testing.T, extra string) *apnsEnv {
	t.Helper()
	s := xapsdtest.NewAPNsSetup(t, extra)
	return &apnsEnv{APNsSetup: s, d: xapsdtest.Start(t, s.Dir, xapsdtest.Options{APNs: s.APNs})}
}

func TestPushReachesAPNsExactlyAsSpecified(t *testing.T) {
	e := newAPNsEnv(t, "")
	status, body := post(t, e.Addr, "/register", registerBody("Alice@Example.com", acc, token(1), "INBOX", "Notes"))
	if status != 200 || body != topicA {
		t.Fatalf("register = %d %q, want 200 and the certificate's UID", status, body)
	}
	before := time.Now()
	if status, _ := post(t, e.Addr, "/notify", notifyBody("alice@example.com", "INBOX", "MessageNew")); status != 200 {
		t.Fatalf("notify status %d", status)
	}
	reqs, err := e.APNs.WaitRequests(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	r := reqs[0]
	if r.Method != "POST" || r.Path != "/3/device/"+token(1) || r.Token != token(1) {
		t.Errorf("request line %s %s", r.Method, r.Path)
	}
	if r.Topic != topicA || r.PushType != "background" || r.Priority != "" {
		t.Errorf("headers topic=%q push-type=%q priority=%q", r.Topic, r.PushType, r.Priority)
	}
	exp, err := strconv.ParseInt(r.Expiration, 10, 64)
	if err != nil || exp < before.Add(24*time.Hour).Unix()-1 || exp > time.Now().Add(24*time.Hour).Unix()+1 {
		t.Errorf("apns-expiration %q is not now+24h", r.Expiration)
	}
	if string(r.Body) != `{"aps":{"account-id":"`+acc+`"}}` {
		t.Errorf("payload %s", r.Body)
	}
	if r.ClientCertSubjectUID != topicA {
		t.Errorf("client certificate UID %q", r.ClientCertSubjectUID)
	}
	// A folder the device registered pushes too (pushMailboxes: registered).
	post(t, e.Addr, "/notify", notifyBody("alice@example.com", "Notes", "MessageNew"))
	if _, err := e.APNs.WaitRequests(2, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if status, _ := post(t, e.Addr, "/notify", notifyBody("alice@example.com", "Trash", "MessageNew")); status != 204 {
		t.Errorf("unregistered folder: status %d, want 204", status)
	}
	if status, _ := post(t, e.Addr, "/notify", notifyBody("bob@example.com", "INBOX", "MessageNew")); status != 404 {
		t.Errorf("unknown user: status %d, want 404", status)
	}
	if strings.Contains(e.d.Log.String(), "level=warn") || strings.Contains(e.d.Log.String(), "level=error") {
		t.Errorf("warnings or errors in a clean run:\n%s", e.d.Log.String())
	}
}

func TestFlagChangeIsDelayedAndMerged(t *testing.T) {
	e := newAPNsEnv(t, "")
	e.Register(t, "alice", acc, token(1))
	e.Register(t, "bob", acc, token(2))
	start := time.Now()
	for range 5 {
		post(t, e.Addr, "/notify", notifyBody("alice", "INBOX", "FlagsSet", "MessageRead"))
	}
	reqs, err := e.APNs.WaitRequests(1, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if waited := reqs[0].Received.Sub(start); waited < time.Second {
		t.Errorf("delayed push sent after %v, before the 1 s delay", waited)
	}
	// A second push for the burst would be due before one for a flag
	// change made now: bob's push is the later event.
	post(t, e.Addr, "/notify", notifyBody("bob", "INBOX", "FlagsSet"))
	testutil.WaitWithin(t, 10*time.Second, "bob's delayed push", func() bool { return perToken(e.APNs.Requests())[token(2)] == 1 })
	if n := perToken(e.APNs.Requests())[token(1)]; n != 1 {
		t.Errorf("%d pushes for a burst of five flag changes, want 1", n)
	}
}

func TestTwoDevicesSharingAnAccountIDBothGetPushes(t *testing.T) {
	e := newAPNsEnv(t, "")
	e.Register(t, "alice", acc, token(1))
	e.Register(t, "alice", acc, token(2))
	post(t, e.Addr, "/notify", notifyBody("alice", "INBOX", "MessageNew"))
	reqs, err := e.APNs.WaitRequests(2, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{reqs[0].Token: true, reqs[1].Token: true}
	if !got[token(1)] || !got[token(2)] {
		t.Errorf("pushed %v, want both tokens", got)
	}
}

func TestAPNsFailuresAreRetriedAndDeadTokensRemoved(t *testing.T) {
	e := newAPNsEnv(t, "")
	regTime := time.Now()
	e.Register(t, "retry", "ACC-R", token(10))
	e.Register(t, "gone", "ACC-G", token(11))
	e.Register(t, "fresh", "ACC-F", token(12))
	e.Register(t, "bad", "ACC-B", token(13))
	var mu sync.Mutex
	calls := map[string]int{}
	e.APNs.SetResponder(func(r fakeapns.Request) fakeapns.Response {
		mu.Lock()
		calls[r.Token]++
		n := calls[r.Token]
		mu.Unlock()
		switch r.Token {
		case token(10):
			// A dropped connection, then Apple overloaded, then fine.
			switch n {
			case 1:
				return fakeapns.Response{Drop: true}
			case 2:
				return fakeapns.Response{Status: 429, Reason: "TooManyRequests"}
			case 3:
				return fakeapns.Response{Status: 503, Reason: "ServiceUnavailable"}
			}
		case token(11):
			// Unregistered after the device registered: remove.
			return fakeapns.Response{Status: 410, Reason: "Unregistered", Timestamp: regTime.Add(time.Hour).UnixMilli()}
		case token(12):
			// Unregistered before the device registered again: keep.
			return fakeapns.Response{Status: 410, Reason: "Unregistered", Timestamp: regTime.Add(-time.Hour).UnixMilli()}
		case token(13):
			return fakeapns.Response{Status: 400, Reason: "BadDeviceToken"}
		}
		return fakeapns.Response{}
	})
	for _, u := range []string{"retry", "gone", "fresh", "bad"} {
		post(t, e.Addr, "/notify", notifyBody(u, "INBOX", "MessageNew"))
	}
	if !e.d.WaitLog("outcome=delivered", 20*time.Second) {
		t.Fatal("the retried push was never delivered")
	}
	if !testutil.Wait(10*time.Second, func() bool {
		s, _ := post(t, e.Addr, "/notify", notifyBody("gone", "INBOX", "FlagsSet"))
		return s == 404
	}) {
		t.Error("410 after registration did not remove the registration")
	}
	if s, _ := post(t, e.Addr, "/notify", notifyBody("fresh", "INBOX", "FlagsSet")); s != 200 {
		t.Errorf("410 older than the registration removed it (status %d)", s)
	}
	// BadDeviceToken in the first minutes after the credential was loaded
	// is a configuration problem until shown otherwise: the device stays.
	if !e.d.WaitLog("outcome=failed reason=BadDeviceToken", 10*time.Second) {
		t.Fatal("no BadDeviceToken answer")
	}
	if s, _ := post(t, e.Addr, "/notify", notifyBody("bad", "INBOX", "FlagsSet")); s != 200 {
		t.Errorf("BadDeviceToken just after the start removed the registration (status %d)", s)
	}
	if !e.d.Running() {
		t.Fatal("the daemon exited")
	}
}

// APNs refusing the credential pauses sending: the pushes wait, /readyz
// and the metrics say why, the log says it once, and a reload with a
// working credential sends them.
func TestCredentialRefusalHoldsTheQueue(t *testing.T) {
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", testutil.MustFreePort(t))
	e := newAPNsEnv(t, "metricsListenAddr: "+metricsAddr+"\n")
	for i := range 5 {
		e.Register(t, fmt.Sprintf("user%d", i), acc, token(20+i))
	}
	var refuse atomic.Bool
	refuse.Store(true)
	e.APNs.SetResponder(func(r fakeapns.Request) fakeapns.Response {
		if refuse.Load() {
			return fakeapns.Response{Status: 403, Reason: "BadCertificate"}
		}
		return fakeapns.Response{}
	})
	for i := range 5 {
		post(t, e.Addr, "/notify", notifyBody(fmt.Sprintf("user%d", i), "INBOX", "MessageNew"))
	}
	if !e.d.WaitLog("Sending is paused", 10*time.Second) {
		t.Fatal("no pause")
	}
	if code, body := get(t, "http://"+metricsAddr+"/readyz"); code != 503 || !strings.Contains(body, "403 BadCertificate") {
		t.Errorf("/readyz = %d %q", code, body)
	}
	if _, body := get(t, "http://"+metricsAddr+"/metrics"); !strings.Contains(body, `xapsd_apns_sending_paused{cause="credential"} 1`) {
		t.Errorf("metrics lack the pause")
	}
	if n := e.APNs.Count(); n > 2 {
		t.Errorf("%d requests reached APNs while it refused the credential", n)
	}
	refusedBefore := e.APNs.Count()
	if n := strings.Count(e.d.Log.String(), "Sending is paused"); n != 1 {
		t.Errorf("the refusal logged %d times, want once", n)
	}
	// Registering goes on while paused.
	e.Register(t, "late", acc, token(30))
	refuse.Store(false)
	e.d.Reload()
	if n := e.d.WaitCount("outcome=delivered", 5, 10*time.Second); n != 5 {
		t.Fatalf("%d pushes delivered after the reload, want 5", n)
	}
	// Whatever reached APNs during the pause is counted by now, with the
	// five deliveries that followed it: no more than two were refused.
	if n := e.APNs.Count() - 5; n > 2 || n < refusedBefore {
		t.Errorf("%d requests reached APNs while it refused the credential (%d when the pause began)", n, refusedBefore)
	}
	// Held pushes do not spend attempts.
	for _, l := range strings.Split(e.d.Log.String(), "\n") {
		if strings.Contains(l, "outcome=delivered") && !strings.Contains(l, "attempt=1 ") {
			t.Errorf("delivered after more than one attempt: %s", l)
		}
	}
	if code, body := get(t, "http://"+metricsAddr+"/readyz"); code != 200 {
		t.Errorf("/readyz after the reload = %d %q", code, body)
	}
}

func TestSIGHUPReloadsCredentials(t *testing.T) {
	e := newAPNsEnv(t, "")
	// A push with the first certificate opens a connection to Apple.
	e.Register(t, "bob", acc, token(2))
	post(t, e.Addr, "/notify", notifyBody("bob", "INBOX", "MessageNew"))
	if _, err := e.APNs.WaitRequests(1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	xapsdtest.WritePushCert(t, e.CA, e.Dir, "push", topicB)
	e.d.Reload()
	if !e.d.WaitLog("credentials reloaded", 10*time.Second) {
		t.Fatal("no reload")
	}
	if _, body := post(t, e.Addr, "/register", registerBody("alice", acc, token(1))); body != topicB {
		t.Errorf("topic after reload %q, want %q", body, topicB)
	}
	post(t, e.Addr, "/notify", notifyBody("alice", "INBOX", "MessageNew"))
	reqs, err := e.APNs.WaitRequests(2, 5*time.Second)
	if err != nil || reqs[1].Topic != topicB || reqs[1].ClientCertSubjectUID != topicB {
		t.Fatalf("push after reload: %+v %v", reqs, err)
	}
	// The old certificate's connection is closed, not kept alive by PINGs.
	testutil.Wait(5*time.Second, func() bool { return e.APNs.OpenConnections() == 1 })
	if n := e.APNs.OpenConnections(); n != 1 {
		t.Errorf("%d connections to APNs after the reload, want 1", n)
	}
	// A broken file keeps the working credential.
	os.WriteFile(filepath.Join(e.Dir, "push.pem"), []byte("garbage"), 0o600)
	e.d.Reload()
	if !e.d.WaitLog("credentials not reloaded", 10*time.Second) {
		t.Fatal("a bad credential was not reported")
	}
	if _, body := post(t, e.Addr, "/register", registerBody("alice", acc, token(1))); body != topicB {
		t.Errorf("topic after failed reload %q", body)
	}
}

func TestGracefulStopSendsDelayedPushes(t *testing.T) {
	e := newAPNsEnv(t, "delay: 3600\n")
	e.Register(t, "alice", acc, token(1))
	post(t, e.Addr, "/notify", notifyBody("alice", "INBOX", "FlagsSet"))
	if code := exitCode(e.d.Stop()); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
	if e.APNs.Count() != 1 {
		t.Fatalf("%d pushes; the pending delayed push was lost at shutdown", e.APNs.Count())
	}
}

func TestUnsentPushesSurviveARestart(t *testing.T) {
	e := newAPNsEnv(t, "shutdownTimeout: 1s\n")
	e.Register(t, "alice", acc, token(1))
	e.APNs.SetResponder(func(fakeapns.Request) fakeapns.Response { return fakeapns.Response{Status: 503} })
	post(t, e.Addr, "/notify", notifyBody("alice", "INBOX", "MessageNew"))
	if !e.d.WaitLog("push will be retried", 10*time.Second) {
		t.Fatal("no failed attempt")
	}
	if code := exitCode(e.d.Stop()); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	pending := filepath.Join(e.Dir, "state", "pending-pushes.json")
	data, err := os.ReadFile(pending)
	if err != nil {
		t.Fatalf("unsent push not kept: %v", err)
	}
	var keys []map[string]string
	if json.Unmarshal(data, &keys) != nil || len(keys) != 1 {
		t.Fatalf("pending file %s", data)
	}
	e.APNs.SetResponder(nil)
	before := e.APNs.Count()
	d := xapsdtest.Start(t, e.Dir, xapsdtest.Options{APNs: e.APNs})
	defer d.Stop()
	testutil.Wait(10*time.Second, func() bool { return e.APNs.Count() != before })
	if e.APNs.Count() == before {
		t.Fatal("the kept push was not sent after the restart")
	}
	// The file goes once the daemon has Apple's answer, a moment after
	// the stand-in counted the request.
	testutil.Wait(10*time.Second, func() bool { _, err := os.Stat(pending); return os.IsNotExist(err) })
	if _, err := os.Stat(pending); !os.IsNotExist(err) {
		t.Errorf("pending file still there: %v", err)
	}
}

func TestReplacedCertificateFileIsPickedUp(t *testing.T) {
	e := newAPNsEnv(t, "")
	xapsdtest.Rewrite(t, func() { xapsdtest.WritePushCert(t, e.CA, e.Dir, "push", topicB) },
		filepath.Join(e.Dir, "push.pem"), filepath.Join(e.Dir, "push.key"))
	if !e.d.WaitLog("credential files changed on disk", 15*time.Second) {
		t.Fatal("a replaced certificate file was not noticed")
	}
	if !e.d.WaitLog("credentials reloaded", 5*time.Second) {
		t.Fatal("no reload")
	}
	if _, body := post(t, e.Addr, "/register", registerBody("alice", acc, token(1))); body != topicB {
		t.Errorf("topic %q after the file changed, want %q", body, topicB)
	}
}

func TestCertificateCloseToExpiryIsWarnedAtStart(t *testing.T) {
	srv, err := fakeapns.Start(fakeapns.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	dir := testutil.TempDir(t)
	ca, err := testpki.NewCA("CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(testpki.IssueOptions{UID: topicA, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10*24*time.Hour + time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "push.pem"), append(leaf.CertPEM(), leaf.KeyPEM()...), 0o600)
	writeConfig(t, dir, fmt.Sprintf("apnsEndpoint: %s\ncertificateFilePem: push.pem\n", srv.URL))
	d := xapsdtest.Start(t, dir, xapsdtest.Options{APNs: srv})
	if !d.WaitLog("expires in 10 days", 5*time.Second) {
		t.Error("no expiry warning for a certificate that ends in 10 days")
	}
	if n := strings.Count(d.Log.String(), "expires in 10 days"); n != 1 {
		t.Errorf("expiry warned %d times at start, want once", n)
	}
}

// A reload of an unchanged .p8 key keeps the provider token: APNs counts
// every new token and refuses more than one per 20 minutes. A new key
// gets a new token.
func TestReloadKeepsTheProviderToken(t *testing.T) {
	srv, err := fakeapns.Start(fakeapns.Options{Apple: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	dir := testutil.TempDir(t)
	writeKey := func() {
		pemBytes, _, err := testpki.NewP8Key()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "key.p8"), pemBytes, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeKey()
	addr := writeConfig(t, dir, fmt.Sprintf("apnsEndpoint: %s\nkeyFileP8: key.p8\nkeyFileKeyId: ABCDEFGHIJ\nkeyFileTeamId: KLMNOPQRST\nkeyFileTopic: %s\n", srv.URL, topicA))
	d := xapsdtest.Start(t, dir, xapsdtest.Options{APNs: srv})
	bearer := func(i int) string {
		t.Helper()
		user := fmt.Sprintf("user%d", i)
		if s, body := post(t, addr, "/register", registerBody(user, acc, token(40+i))); s != 200 {
			t.Fatalf("register: %d %s", s, body)
		}
		post(t, addr, "/notify", notifyBody(user, "INBOX", "MessageNew"))
		reqs, err := srv.WaitRequests(i, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		r := reqs[i-1]
		if r.Token != token(40+i) || !strings.HasPrefix(r.Authorization, "bearer ") {
			t.Fatalf("request %+v", r)
		}
		return r.Authorization
	}
	reload := func(n int) {
		t.Helper()
		d.Reload()
		if d.WaitCount("credentials reloaded", n, 10*time.Second) < n {
			t.Fatal("no reload")
		}
	}
	first := bearer(1)
	reload(1)
	if got := bearer(2); got != first {
		t.Errorf("a reload of the same key made a new token")
	}
	xapsdtest.Rewrite(t, writeKey, filepath.Join(dir, "key.p8")) // a new mtime for the watcher, whichever sees it first
	reload(2)
	if got := bearer(3); got == first {
		t.Errorf("a new key kept the old token")
	}
	if srv.Violations() != 0 {
		t.Errorf("%d streams over the limit of a token connection", srv.Violations())
	}
}
