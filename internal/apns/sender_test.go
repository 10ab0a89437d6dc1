package apns

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sideshow/apns2"
	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/testutil"
)

// scripted is a Transport whose answers the test decides per device.
type scripted struct {
	mu      sync.Mutex
	answer  func(n *apns2.Notification, call int) (*apns2.Response, error)
	calls   map[string]int
	sent    []*apns2.Notification
	release chan struct{} // when set, every push blocks until it is closed
}

func (s *scripted) PushWithContext(ctx apns2.Context, n *apns2.Notification) (*apns2.Response, error) {
	s.mu.Lock()
	if s.calls == nil {
		s.calls = map[string]int{}
	}
	s.calls[n.DeviceToken]++
	call := s.calls[n.DeviceToken]
	s.sent = append(s.sent, n)
	rel := s.release
	s.mu.Unlock()
	if rel != nil {
		select {
		case <-rel:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if s.answer == nil {
		return &apns2.Response{StatusCode: 200}, nil
	}
	return s.answer(n, call)
}

func (s *scripted) count(tok string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[tok]
}

type removals struct {
	mu   sync.Mutex
	got  []registry.Key
	when []time.Time
}

func (r *removals) Remove(_ context.Context, k registry.Key, before time.Time) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, k)
	r.when = append(r.when, before)
	return false, nil
}

type results struct {
	mu  sync.Mutex
	all []Result
	ch  chan Result
}

func newResults() *results { return &results{ch: make(chan Result, 1000)} }
func (r *results) add(res Result) {
	r.mu.Lock()
	r.all = append(r.all, res)
	r.mu.Unlock()
	select {
	case r.ch <- res:
	default: // a test that does not read them must not stall the sender
	}
}
func (r *results) wait(t *testing.T) Result {
	t.Helper()
	select {
	case res := <-r.ch:
		return res
	case <-time.After(10 * time.Second):
		t.Fatal("no push result within 10 s")
		return Result{}
	}
}

// looks counts the dispatcher's looks at the queue that found pushes
// waiting and sent none: the moment a push that is held would have gone.
type looks struct {
	mu   sync.Mutex
	held int
}

func (l *looks) record(waiting int, sent bool) {
	if waiting > 0 && !sent {
		l.mu.Lock()
		l.held++
		l.mu.Unlock()
	}
}

func (l *looks) heldCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held
}

// waitHeldAfter waits for a look that held a push back, after the n
// counted so far.
func (l *looks) waitHeldAfter(t *testing.T, n int) {
	t.Helper()
	testutil.WaitFor(t, "the dispatcher to look at the queue and hold it", func() bool { return l.heldCount() > n })
}

func start(t *testing.T, tr Transport, o Options) (*Sender, *results) {
	t.Helper()
	res := newResults()
	o.OnResult = res.add
	if o.MinBackoff == 0 {
		o.MinBackoff, o.MaxBackoff = 5*time.Millisecond, 20*time.Millisecond
	}
	s := New(&Client{Topic: "com.apple.mail.XServer.test", Transport: tr}, daemonOptions(o))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s, res
}

var dev = registry.Key{User: "alice", AccountID: `ACC"1`, DeviceToken: "aa11"}

func TestPushRequestShape(t *testing.T) {
	tr := &scripted{}
	before := time.Now()
	s, res := start(t, tr, Options{Priority: 5, Expiration: time.Hour})
	s.Enqueue(dev)
	if r := res.wait(t); r.Outcome != Delivered || r.Status != 200 {
		t.Fatalf("result %+v", r)
	}
	n := tr.sent[0]
	if n.DeviceToken != "aa11" || n.Topic != "com.apple.mail.XServer.test" || n.PushType != apns2.PushTypeBackground || n.Priority != 5 {
		t.Errorf("notification %+v", n)
	}
	if got := string(n.Payload.([]byte)); got != `{"aps":{"account-id":"ACC\"1"}}` {
		t.Errorf("payload %s", got)
	}
	if n.Expiration.Before(before.Add(time.Hour)) || n.Expiration.After(time.Now().Add(time.Hour)) {
		t.Errorf("expiration %v not now+1h", n.Expiration)
	}
}

func TestQueuedDeviceIsNotQueuedTwice(t *testing.T) {
	tr := &scripted{release: make(chan struct{})}
	s, res := start(t, tr, Options{Concurrency: 1})
	other := registry.Key{User: "bob", AccountID: "B", DeviceToken: "bb"}
	s.Enqueue(other) // occupies the only worker
	testutil.WaitFor(t, "bob's push to be on its way", func() bool { return tr.count("bb") > 0 })
	for range 100 {
		s.Enqueue(dev)
	}
	if q, _ := s.Depth(); q != 1 {
		t.Fatalf("queued = %d after 100 events for one device, want 1", q)
	}
	close(tr.release)
	res.wait(t)
	res.wait(t)
	// One worker takes the queue in order: a second push to the device
	// would go before a third device's.
	s.Enqueue(registry.Key{User: "carol", AccountID: "C", DeviceToken: "cc"})
	res.wait(t)
	if n := tr.count("aa11"); n != 1 {
		t.Errorf("device pushed %d times, want 1", n)
	}
}

func TestInFlightDeviceIsQueuedAgain(t *testing.T) {
	tr := &scripted{release: make(chan struct{})}
	s, res := start(t, tr, Options{})
	s.Enqueue(dev)
	testutil.WaitFor(t, "the push to be on its way", func() bool { return tr.count("aa11") > 0 })
	s.Enqueue(dev) // a change after the push left must get its own push
	close(tr.release)
	res.wait(t)
	res.wait(t)
	if n := tr.count("aa11"); n != 2 {
		t.Errorf("pushed %d times, want 2", n)
	}
}

func TestTemporaryFailuresAreRetried(t *testing.T) {
	cases := map[string]func() (*apns2.Response, error){
		"transport": func() (*apns2.Response, error) { return nil, errors.New("connection reset") },
		"429": func() (*apns2.Response, error) {
			return &apns2.Response{StatusCode: 429, Reason: "TooManyRequests"}, nil
		},
		"503": func() (*apns2.Response, error) {
			return &apns2.Response{StatusCode: 503, Reason: "ServiceUnavailable"}, nil
		},
		"500": func() (*apns2.Response, error) {
			return &apns2.Response{StatusCode: 500, Reason: "InternalServerError"}, nil
		},
	}
	for name, fail := range cases {
		t.Run(name, func(t *testing.T) {
			tr := &scripted{answer: func(_ *apns2.Notification, call int) (*apns2.Response, error) {
				if call < 3 {
					return fail()
				}
				return &apns2.Response{StatusCode: 200}, nil
			}}
			s, res := start(t, tr, Options{})
			s.Enqueue(dev)
			for i, want := range []Outcome{Retrying, Retrying, Delivered} {
				if r := res.wait(t); r.Outcome != want || r.Attempt != i+1 {
					t.Fatalf("attempt %d: %+v, want %s", i+1, r, want)
				}
			}
		})
	}
}

func TestRetriesStopWhenThePushWouldExpire(t *testing.T) {
	tr := &scripted{answer: func(*apns2.Notification, int) (*apns2.Response, error) {
		return &apns2.Response{StatusCode: 503}, nil
	}}
	s, res := start(t, tr, Options{Expiration: 60 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	s.Enqueue(dev)
	for {
		r := res.wait(t)
		if r.Outcome == Expired {
			break
		}
		if r.Outcome != Retrying {
			t.Fatalf("unexpected %+v", r)
		}
	}
	// The expired push's attempt ends; a retry would keep it queued.
	if !testutil.Wait(testutil.Patience, func() bool { q, f := s.Depth(); return q == 0 && f == 0 }) {
		q, f := s.Depth()
		t.Errorf("after expiry queued=%d inFlight=%d", q, f)
	}
}

func TestPermanentAnswersAreNotRetriedAndDeadTokensAreRemoved(t *testing.T) {
	ts := time.Unix(1700000000, 0)
	cases := []struct {
		name       string
		resp       *apns2.Response
		want       Outcome
		removed    bool
		wantBefore time.Time
	}{
		{"410 with timestamp", &apns2.Response{StatusCode: 410, Reason: "Unregistered", Timestamp: apns2.Time{Time: ts}}, Removed, true, ts.Add(time.Second - time.Nanosecond)},
		{"410 without timestamp", &apns2.Response{StatusCode: 410, Reason: "ExpiredToken"}, Removed, true, time.Time{}},
		// The reason decides, whatever the status.
		{"Unregistered with 400", &apns2.Response{StatusCode: 400, Reason: "Unregistered", Timestamp: apns2.Time{Time: ts}}, Removed, true, ts.Add(time.Second - time.Nanosecond)},
		{"ExpiredToken with 400", &apns2.Response{StatusCode: 400, Reason: "ExpiredToken"}, Removed, true, time.Time{}},
		{"410 with another reason", &apns2.Response{StatusCode: 410, Reason: "Gone"}, Removed, true, time.Time{}},
		{"BadCollapseId", &apns2.Response{StatusCode: 400, Reason: "BadCollapseId"}, Failed, false, time.Time{}},
		{"PayloadTooLarge", &apns2.Response{StatusCode: 413, Reason: "PayloadTooLarge"}, Failed, false, time.Time{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rm := &removals{}
			tr := &scripted{answer: func(*apns2.Notification, int) (*apns2.Response, error) { return c.resp, nil }}
			s, res := start(t, tr, Options{Remover: rm})
			s.Enqueue(dev)
			if r := res.wait(t); r.Outcome != c.want || r.Status != c.resp.StatusCode || r.Reason != c.resp.Reason {
				t.Fatalf("result %+v, want %s", r, c.want)
			}
			// Once the attempt has ended nothing is queued: a retry
			// would be.
			testutil.WaitFor(t, "the attempt to end", func() bool { q, f := s.Depth(); return q == 0 && f == 0 })
			if n := tr.count("aa11"); n != 1 {
				t.Errorf("sent %d times; a permanent answer must not be retried", n)
			}
			if c.removed != (len(rm.got) == 1) {
				t.Fatalf("removals %v, want removed=%v", rm.got, c.removed)
			}
			if c.removed && (rm.got[0] != dev || !rm.when[0].Equal(c.wantBefore)) {
				t.Errorf("removed %+v before %v, want %+v before %v", rm.got[0], rm.when[0], dev, c.wantBefore)
			}
		})
	}
}

func TestDrainSendsQueuedAndReturnsTheRest(t *testing.T) {
	tr := &scripted{answer: func(n *apns2.Notification, _ int) (*apns2.Response, error) {
		if n.DeviceToken == "dead" {
			return &apns2.Response{StatusCode: 503}, nil
		}
		return &apns2.Response{StatusCode: 200}, nil
	}}
	seen := &looks{}
	s, _ := start(t, tr, Options{MinBackoff: time.Hour, MaxBackoff: time.Hour, looked: seen.record})
	s.Enqueue(dev)
	s.Enqueue(registry.Key{User: "bob", AccountID: "B", DeviceToken: "dead"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	left, err := s.Drain(ctx)
	if err != nil {
		t.Fatalf("Drain: %v", err)
	}
	if tr.count("aa11") != 1 {
		t.Error("queued push not sent during drain")
	}
	if len(left) != 1 || left[0].DeviceToken != "dead" {
		t.Errorf("left = %+v, want the device waiting for a retry", left)
	}
	held := seen.heldCount()
	s.Enqueue(dev)
	seen.waitHeldAfter(t, held)
	if tr.count("aa11") != 1 {
		t.Error("a stopped sender still pushed")
	}
}

func TestDrainTimeoutReturnsUnsent(t *testing.T) {
	tr := &scripted{release: make(chan struct{})}
	defer close(tr.release)
	s, _ := start(t, tr, Options{Concurrency: 1})
	s.Enqueue(registry.Key{User: "x", AccountID: "X", DeviceToken: "busy"})
	testutil.WaitFor(t, "the first push to be on its way", func() bool { return tr.count("busy") > 0 })
	s.Enqueue(dev)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	left, err := s.Drain(ctx)
	if !errors.Is(err, ErrDrainTimeout) {
		t.Fatalf("Drain error %v, want ErrDrainTimeout", err)
	}
	// The queued device and the one whose push never got an answer.
	got := map[string]bool{}
	for _, k := range left {
		got[k.DeviceToken] = true
	}
	if len(left) != 2 || !got["busy"] || !got[dev.DeviceToken] {
		t.Fatalf("left %+v, want the queued device and the one in flight", left)
	}
}

func TestSetClientSwapsCredentials(t *testing.T) {
	tr := &scripted{}
	s, res := start(t, tr, Options{})
	s.SetClient(&Client{Topic: "com.apple.mail.XServer.new", Transport: tr})
	s.Enqueue(dev)
	res.wait(t)
	if tr.sent[0].Topic != "com.apple.mail.XServer.new" {
		t.Errorf("topic %q after SetClient", tr.sent[0].Topic)
	}
}

func TestPushNowReportsAppleAnswer(t *testing.T) {
	tr := &scripted{answer: func(*apns2.Notification, int) (*apns2.Response, error) {
		return &apns2.Response{StatusCode: http.StatusBadRequest, Reason: "TopicDisallowed", ApnsID: "id-1"}, nil
	}}
	s := New(&Client{Topic: "t", Transport: tr}, daemonOptions(Options{}))
	r := s.PushNow(context.Background(), dev)
	if r.Status != 400 || r.Reason != "TopicDisallowed" || r.ApnsID != "id-1" || r.Outcome != Failed {
		t.Errorf("PushNow = %+v", r)
	}
	// The refusal concerns every push: sending pauses, and an accepted
	// test-push ends the pause.
	if cause, why := s.Paused(); cause != PauseCredential || !strings.Contains(why.Error(), "TopicDisallowed") {
		t.Errorf("Paused() = %q, %v", cause, why)
	}
	tr.mu.Lock()
	tr.answer = nil
	tr.mu.Unlock()
	if r := s.PushNow(context.Background(), dev); r.Outcome != Delivered {
		t.Fatalf("PushNow = %+v", r)
	}
	if cause, why := s.Paused(); cause != "" || why != nil {
		t.Errorf("still paused after a delivered test-push: %q, %v", cause, why)
	}
}

func TestBackoffGrowsWithJitterAndCap(t *testing.T) {
	s := New(&Client{}, daemonOptions(Options{MinBackoff: time.Second, MaxBackoff: 8 * time.Second}))
	for attempt, max := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 9: 8 * time.Second} {
		for range 50 {
			d := s.backoff(attempt)
			if d < max/2 || d > max {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", attempt, d, max/2, max)
			}
		}
	}
}

func TestTransportErrorsDoNotLogTheToken(t *testing.T) {
	tr := &scripted{answer: func(n *apns2.Notification, _ int) (*apns2.Response, error) {
		return nil, &url.Error{Op: "Post", URL: "https://api.push.apple.com/3/device/" + n.DeviceToken, Err: errors.New("connection reset by peer")}
	}}
	s := New(&Client{Topic: "t", Transport: tr}, daemonOptions(Options{}))
	r := s.PushNow(context.Background(), registry.Key{User: "u", AccountID: "A", DeviceToken: "deadbeefcafe0123456789"})
	if strings.Contains(r.Reason, "deadbeefcafe0123456789") || !strings.Contains(r.Reason, "connection reset by peer") {
		t.Errorf("reason %q", r.Reason)
	}
}

// A dry-run push reached nobody: it has its own outcome, not delivered.
func TestDryRunPushesAreTheirOwnOutcome(t *testing.T) {
	var logged testutil.Buffer
	l := logrus.New()
	l.SetOutput(&logged)
	res := newResults()
	s := New(NewDryRunClient("com.apple.mail.XServer.test", l), daemonOptions(Options{OnResult: res.add, Log: l}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	s.Enqueue(dev)
	if r := res.wait(t); r.Outcome != DryRun || r.Status != 200 {
		t.Errorf("dry-run push: %+v", r)
	}
	if r := s.PushNow(context.Background(), dev); r.Outcome != DryRun {
		t.Errorf("dry-run test push: %+v", r)
	}
	// The sender logs a push after reporting its result, and Run does
	// not wait for a push's goroutine: wait for both lines.
	testutil.WaitFor(t, "both pushes logged", func() bool { return strings.Count(logged.String(), "outcome=") >= 2 })
	cancel()
	<-done
	if strings.Contains(logged.String(), "outcome=delivered") || !strings.Contains(logged.String(), "outcome=dry-run") {
		t.Errorf("log:\n%s", logged.String())
	}
}

// test-push tries once: a temporary failure is reported as failed with
// its reason, never as retrying, nothing is queued for a retry, and the
// log says it was a test.
func TestPushNowIsATestAndNeverRetries(t *testing.T) {
	for name, answer := range map[string]func(*apns2.Notification, int) (*apns2.Response, error){
		"transport error": func(*apns2.Notification, int) (*apns2.Response, error) {
			return nil, errors.New("connection refused")
		},
		"503": func(*apns2.Notification, int) (*apns2.Response, error) {
			return &apns2.Response{StatusCode: 503, Reason: "ServiceUnavailable"}, nil
		},
		"expired provider token": func(*apns2.Notification, int) (*apns2.Response, error) {
			return &apns2.Response{StatusCode: 403, Reason: "ExpiredProviderToken"}, nil
		},
	} {
		t.Run(name, func(t *testing.T) {
			var logged bytes.Buffer
			l := logrus.New()
			l.SetOutput(&logged)
			tr := &scripted{answer: answer}
			var seen []Result
			s := New(&Client{Topic: "t", Transport: tr}, daemonOptions(Options{Log: l, OnResult: func(r Result) { seen = append(seen, r) }}))
			r := s.PushNow(context.Background(), dev)
			if r.Outcome != Failed || !r.Test || r.Reason == "" {
				t.Errorf("PushNow = %+v, want failed with a reason", r)
			}
			if q, f := s.Depth(); q != 0 || f != 0 || tr.count(dev.DeviceToken) != 1 {
				t.Errorf("queued %d, in flight %d, sent %d: a test push must be tried once", q, f, tr.count(dev.DeviceToken))
			}
			if len(seen) != 1 || seen[0].Outcome != Failed {
				t.Errorf("reported %+v", seen)
			}
			out := logged.String()
			if strings.Contains(out, "retr") || !strings.Contains(out, "test push") || !strings.Contains(out, "test=true") {
				t.Errorf("log:\n%s", out)
			}
		})
	}
}
