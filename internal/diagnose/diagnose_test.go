package diagnose

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/apns"
	"github.com/xapsd/xapsd/internal/history"
	"github.com/xapsd/xapsd/internal/notify"
	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/registry/registrytest"
	"github.com/xapsd/xapsd/internal/scheduler"
)

const tok = "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF"

var now = time.Date(2026, 5, 4, 12, 0, 0, 0, time.UTC)

type queue map[registry.Key]apns.Waiting

func (q queue) Waiting(k registry.Key) (apns.Waiting, bool) { w, ok := q[k]; return w, ok }

// env is a daemon's parts with a real registry, history and scheduler.
type env struct {
	reg    *registry.Registry
	hist   *history.History
	sched  *scheduler.Scheduler
	queue  queue
	daemon Daemon
}

func newEnv(t *testing.T) *env {
	t.Helper()
	r := registrytest.Open(t, registrytest.Defaults())
	return &env{reg: r, hist: history.New(history.Options{Now: func() time.Time { return now.Add(-time.Minute) }}),
		sched: scheduler.New(scheduler.Options{Delay: 30 * time.Second, CheckInterval: 20 * time.Second, Now: func() time.Time { return now }}),
		queue: queue{},
		daemon: Daemon{Credential: "PEM certificate /etc/xapsd/push.pem", Topic: "com.apple.mail.XServer.x",
			Expires: now.Add(200 * 24 * time.Hour), APNs: apns.Reachability{State: apns.ReachConnected}}}
}

func (e *env) register(t *testing.T, user, token string) registry.Key {
	t.Helper()
	k := registry.Key{User: user, AccountID: "ACC", DeviceToken: token}
	if err := e.reg.Register(context.Background(), registry.Registration{Key: k, Mailboxes: []string{"INBOX"}}); err != nil {
		t.Fatal(err)
	}
	return k
}

// delivered records new mail for k's user and the push to k with outcome.
func (e *env) delivered(k registry.Key, outcome apns.Outcome, status int, reason string) {
	e.hist.Notified(k.User, "INBOX", []string{"MessageNew"}, notify.ResultPushed)
	e.hist.Pushed(k.User, k.AccountID, k.DeviceToken, string(outcome), status, reason)
}

func (e *env) diagnose(user string) Report {
	return Sources{Daemon: func(context.Context) Daemon { return e.daemon }, Registry: e.reg, History: e.hist,
		Queue: e.queue, Delays: e.sched, Now: func() time.Time { return now }}.Diagnose(context.Background(), user)
}

func stepOf(r Report, name string) Step {
	for _, s := range r.Steps {
		if s.Name == name {
			return s
		}
	}
	return Step{}
}

// wantVerdict checks that the verdict names step (or none) and says want.
func wantVerdict(t *testing.T, r Report, step string, want ...string) {
	t.Helper()
	if r.Verdict.Step != step || r.Verdict.OK != (step == "") {
		t.Errorf("verdict %+v, want step %q", r.Verdict, step)
	}
	for _, w := range want {
		if !strings.Contains(r.Verdict.Text, w) {
			t.Errorf("verdict %q lacks %q", r.Verdict.Text, w)
		}
	}
	if t.Failed() {
		for _, s := range r.Steps {
			t.Logf("%s [%s] %s %q", s.Name, s.Status, s.Summary, s.Lines)
		}
	}
}

func TestAllFineSaysTheServerSideWorks(t *testing.T) {
	e := newEnv(t)
	e.delivered(e.register(t, "alice@example.org", tok), apns.Delivered, 200, "")
	r := e.diagnose("Alice@Example.org")
	wantVerdict(t, r, "", "the server side works", "Fetch New Data")
	if r.User != "alice@example.org" || len(r.Devices) != 1 || r.Devices[0].LastPush == nil || r.Devices[0].LastPush.Outcome != "delivered" {
		t.Errorf("report %+v", r)
	}
	if r.Daemon.DaysLeft == nil || *r.Daemon.DaysLeft != 200 {
		t.Errorf("days left %v", r.Daemon.DaysLeft)
	}
	if len(r.Events) != 1 || r.Events[0].Result != notify.ResultPushed {
		t.Errorf("events %+v", r.Events)
	}
}

func TestNoDeviceNamesTheRegistrationStep(t *testing.T) {
	e := newEnv(t)
	e.hist.Notified("carol@example.org", "INBOX", []string{"MessageNew"}, notify.ResultNoDevice)
	r := e.diagnose("carol@example.org")
	wantVerdict(t, r, StepRegistrations, "no device registered for carol@example.org", "XAPPLEPUSHSERVICE")
}

// The phone registered as "alice" (the IMAP login) while mail arrives for
// alice@example.org: both ways round, the verdict names the mismatch.
func TestUserNameMismatch(t *testing.T) {
	e := newEnv(t)
	e.register(t, "alice", tok)
	e.hist.Notified("alice@example.org", "INBOX", []string{"MessageNew"}, notify.ResultNoDevice)
	r := e.diagnose("alice")
	wantVerdict(t, r, StepEvents, "no /notify for alice, but for alice@example.org", "auth_username_format", "xaps_user_lookup")
	if len(r.LookAlikes) != 1 || r.LookAlikes[0].User != "alice@example.org" || len(r.LookAlikes[0].Events) != 1 {
		t.Errorf("look-alikes %+v", r.LookAlikes)
	}
	r = e.diagnose("alice@example.org")
	wantVerdict(t, r, StepRegistrations, "no device registered for alice@example.org, but under alice (1)", "auth_username_format")
}

func TestPushesFailAtApple(t *testing.T) {
	e := newEnv(t)
	e.delivered(e.register(t, "bob", tok), apns.Failed, 400, "BadDeviceToken")
	r := e.diagnose("bob")
	wantVerdict(t, r, StepPushes, "pushes fail at Apple", "400 BadDeviceToken", "apnsEndpoint must be production")
}

func TestDaemonProblemsComeFirst(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Daemon)
		want string
	}{
		{"no credential", func(d *Daemon) { d.Problem = "certificate push.pem has expired" }, "no usable push credential: certificate push.pem has expired"},
		{"paused", func(d *Daemon) { d.Paused = "sending paused since …: APNs refuses every push with 403" }, "APNs refuses every push"},
		{"unreachable", func(d *Daemon) {
			d.APNs = apns.Reachability{State: apns.ReachUnreachable, Err: errors.New("dial tcp: i/o timeout")}
		}, "APNs cannot be reached: dial tcp: i/o timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			tc.mod(&e.daemon)
			wantVerdict(t, e.diagnose("nobody"), StepDaemon, tc.want)
		})
	}
	e := newEnv(t)
	e.daemon.Expires = now.Add(5 * 24 * time.Hour)
	if s := stepOf(e.diagnose("nobody"), StepDaemon); s.Status != StatusWarn || !strings.Contains(s.Summary, "expires in 5 days") {
		t.Errorf("close to expiry: %+v", s)
	}
}

// In dry-run the rest of the chain is still checked, and an all-fine
// verdict says that Apple is never asked.
func TestDryRunIsAWarning(t *testing.T) {
	e := newEnv(t)
	e.daemon = Daemon{Credential: "none (dryRunTopic)", Topic: "t", DryRun: true, APNs: apns.Reachability{State: apns.ReachDryRun}}
	e.delivered(e.register(t, "alice", tok), apns.DryRun, 200, "")
	r := e.diagnose("alice")
	wantVerdict(t, r, "", "the server side works, but apnsEndpoint is dry-run")
	if s := stepOf(r, StepDaemon); s.Status != StatusWarn {
		t.Errorf("daemon step %+v", s)
	}
	wantVerdict(t, e.diagnose("alice@example.org"), StepRegistrations, "but under alice")
}

// Each device says what holds its next push back.
func TestHeldPushesSayByWhat(t *testing.T) {
	e := newEnv(t)
	paced := e.register(t, "dora", tok)
	retried := e.register(t, "dora", strings.Replace(tok, "0", "1", 1))
	delayed := e.register(t, "dora", strings.Replace(tok, "0", "2", 1))
	e.hist.Notified("dora", "INBOX", []string{"FlagsSet"}, notify.ResultDelayed)
	e.queue[paced] = apns.Waiting{Why: apns.WaitPacing, Until: now.Add(2 * time.Second)}
	e.queue[retried] = apns.Waiting{Why: apns.WaitRetry, Until: now.Add(time.Minute), Attempt: 2}
	e.sched.Delay(delayed)
	r := e.diagnose("dora")
	by := map[string]string{}
	for _, d := range r.Devices {
		if d.Held != nil {
			by[d.DeviceToken] = d.Held.By
		}
	}
	if by[paced.DeviceToken] != apns.WaitPacing || by[retried.DeviceToken] != apns.WaitRetry || by[delayed.DeviceToken] != HoldDelay {
		t.Errorf("holds %v", by)
	}
	lines := strings.Join(stepOf(r, StepPushes).Lines, "\n")
	for _, want := range []string{"held by pacing", "to be retried until", "attempt 2", "delayed, as changes that are not new mail wait"} {
		if !strings.Contains(lines, want) {
			t.Errorf("pushes step lacks %q:\n%s", want, lines)
		}
	}
}

// No event yet for a registered user: the chain is not proven, and the
// verdict says how to go on.
func TestNoEventYetSaysToDeliverAMail(t *testing.T) {
	e := newEnv(t)
	e.register(t, "erin", tok)
	wantVerdict(t, e.diagnose("erin"), StepEvents, "no /notify for erin since xapsd started", "deliver a mail")
}

func TestShortTokenShowsBothEnds(t *testing.T) {
	if got := ShortToken(tok); got != "01234567…CDEF" {
		t.Errorf("ShortToken = %q", got)
	}
}
