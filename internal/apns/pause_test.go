package apns

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sideshow/apns2"
	"github.com/sideshow/apns2/token"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
)

// startClient runs a sender on c; its log goes to the returned hook.
func startClient(t *testing.T, c *Client, o Options) (*Sender, *results, *logtest.Hook) {
	t.Helper()
	log, hook := logtest.NewNullLogger()
	log.SetLevel(logrus.DebugLevel)
	o.Log = log
	res := newResults()
	o.OnResult = res.add
	if o.MinBackoff == 0 {
		o.MinBackoff, o.MaxBackoff = 5*time.Millisecond, 20*time.Millisecond
	}
	s := New(c, daemonOptions(o))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s, res, hook
}

func devKey(i int) registry.Key {
	return registry.Key{User: fmt.Sprintf("u%d", i), AccountID: fmt.Sprintf("A%d", i), DeviceToken: fmt.Sprintf("%064x", i)}
}

// count returns the lines of the hook's log at level that contain s.
func count(hook *logtest.Hook, level logrus.Level, s string) int {
	n := 0
	for _, e := range hook.AllEntries() {
		if e.Level == level && strings.Contains(e.Message, s) {
			n++
		}
	}
	return n
}

// firstAttempts checks that every delivered push went at its first
// attempt: held attempts do not count.
func (r *results) firstAttempts(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, x := range r.all {
		if x.Outcome == Delivered && x.Attempt != 1 {
			t.Errorf("delivered at attempt %d: held attempts were counted", x.Attempt)
			return
		}
	}
}

// byOutcome counts the results seen so far.
func (r *results) byOutcome() map[Outcome]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := map[Outcome]int{}
	for _, x := range r.all {
		m[x.Outcome]++
	}
	return m
}

// When APNs refuses the credential, every push would be refused the same
// way: sending pauses, the pushes stay queued without spending their
// attempts, the error is logged once a minute, one push a minute probes,
// and when a probe passes everything goes out.
func TestCredentialRefusalPausesSending(t *testing.T) {
	var refuse atomic.Bool
	refuse.Store(true)
	srv := appleServer(t, fakeapns.Options{Responder: func(fakeapns.Request) fakeapns.Response {
		if refuse.Load() {
			return fakeapns.Response{Status: 403, Reason: "BadCertificate"}
		}
		return fakeapns.Response{}
	}})
	c := tokenClientFor(t, srv, ClientOptions{})
	rm := &removals{}
	s, res, hook := startClient(t, c, Options{ProbeInterval: 300 * time.Millisecond, Remover: rm})
	const n = 50
	for i := range n {
		s.Enqueue(devKey(i))
	}
	testutil.WaitFor(t, "the pause", func() bool { cause, _ := s.Paused(); return cause == PauseCredential })
	if _, why := s.Paused(); !strings.Contains(why.Error(), "403 BadCertificate") {
		t.Errorf("pause reason %v", why)
	}
	// Probes only: one every 300 ms. Wait for three and look at when
	// they came (the first may follow a push that was on its way when
	// the refusal came).
	before := srv.Count()
	// Requests, not Count: the stand-in counts a request a moment before
	// it records it.
	testutil.WaitFor(t, "three probes", func() bool { return len(srv.Requests()) >= int(before)+3 })
	reqs := srv.Requests()
	for i := len(reqs) - 2; i < len(reqs); i++ {
		if gap := reqs[i].Received.Sub(reqs[i-1].Received); gap < 250*time.Millisecond {
			t.Errorf("requests %d and %d reached APNs %v apart while it refused the credential, want a probe each 300 ms", i-1, i, gap)
		}
	}
	// The pushes already on their way to a stream when the refusal came
	// are refused too: a handful, how many depends on how fast the
	// transport turns a stream around. The rest of the queue waited.
	if before > n/5 {
		t.Errorf("%d requests reached APNs before sending paused, want the few on their way (at most %d of %d)", before, n/5, n)
	}
	if q, _ := s.Depth(); q != n {
		t.Errorf("%d pushes queued while paused, want %d", q, n)
	}
	if m := res.byOutcome(); m[Failed]+m[Retrying]+m[Expired]+m[Removed] != 0 || m[Held] == 0 {
		t.Errorf("outcomes while refused: %v", m)
	}
	if got := count(hook, logrus.ErrorLevel, "BadCertificate"); got != 1 {
		t.Errorf("the refusal was logged %d times, want once a minute", got)
	}
	refuse.Store(false)
	testutil.WaitFor(t, "every push delivered", func() bool { return res.byOutcome()[Delivered] == n })
	if cause, _ := s.Paused(); cause != "" {
		t.Errorf("still paused: %s", cause)
	}
	res.firstAttempts(t)
	if len(rm.got) != 0 {
		t.Errorf("registrations removed: %v", rm.got)
	}
	if got := count(hook, logrus.InfoLevel, "sending resumed"); got != 1 {
		t.Errorf("resume logged %d times", got)
	}
}

// Every answer that concerns the credential or the kind of request
// pauses; answers about one device do not.
func TestCredentialRefusalsPauseAndDeviceAnswersDoNot(t *testing.T) {
	for _, c := range []struct {
		status int
		reason string
		pause  bool
	}{
		{403, "BadCertificate", true}, {403, "BadCertificateEnvironment", true}, {403, "InvalidProviderToken", true},
		{403, "Forbidden", true}, {403, "MissingProviderToken", true}, {403, "UnrelatedKeyIdInToken", true},
		{400, "BadTopic", true}, {400, "MissingTopic", true}, {400, "TopicDisallowed", true},
		{400, "BadPriority", true}, {400, "InvalidPushType", true},
		{400, "BadCollapseId", false}, {413, "PayloadTooLarge", false}, {410, "Unregistered", false},
		{429, "TooManyRequests", false}, {503, "ServiceUnavailable", false},
	} {
		t.Run(c.reason, func(t *testing.T) {
			tr := &scripted{answer: func(*apns2.Notification, int) (*apns2.Response, error) {
				return &apns2.Response{StatusCode: c.status, Reason: c.reason}, nil
			}}
			s, res := start(t, tr, Options{Remover: &removals{}, ProbeInterval: time.Hour})
			s.Enqueue(dev)
			r := res.wait(t)
			cause, why := s.Paused()
			if c.pause != (cause == PauseCredential) || c.pause != (r.Outcome == Held) {
				t.Fatalf("%d %s: outcome %s, paused %q %v", c.status, c.reason, r.Outcome, cause, why)
			}
			if c.pause && c.reason == "BadPriority" && !strings.Contains(why.Error(), "apnsPriority: 5") {
				t.Errorf("BadPriority advice: %v", why)
			}
		})
	}
}

// A reload ends the pause at once.
func TestNewCredentialsEndThePause(t *testing.T) {
	bad := &scripted{answer: func(*apns2.Notification, int) (*apns2.Response, error) {
		return &apns2.Response{StatusCode: 403, Reason: "InvalidProviderToken"}, nil
	}}
	s, res := start(t, bad, Options{ProbeInterval: time.Hour})
	s.Enqueue(dev)
	if r := res.wait(t); r.Outcome != Held {
		t.Fatalf("%+v", r)
	}
	good := &scripted{}
	s.SetClient(&Client{Topic: "t", Transport: good})
	if r := res.wait(t); r.Outcome != Delivered || r.Attempt != 1 {
		t.Fatalf("after the reload: %+v", r)
	}
	if cause, _ := s.Paused(); cause != "" {
		t.Errorf("paused: %s", cause)
	}
	// A refusal for credentials already replaced does not pause the new ones.
	old := &Client{Topic: "t", Transport: bad}
	s.pauseFor(old, refusal(403, "InvalidProviderToken"), time.Now().Add(time.Hour))
	if cause, _ := s.Paused(); cause != "" {
		t.Errorf("paused by the old credential: %s", cause)
	}
}

// Pushes held by a pause expire as they would have.
func TestHeldPushesExpire(t *testing.T) {
	tr := &scripted{answer: func(*apns2.Notification, int) (*apns2.Response, error) {
		return &apns2.Response{StatusCode: 403, Reason: "BadCertificate"}, nil
	}}
	s, res := start(t, tr, Options{ProbeInterval: 400 * time.Millisecond, Expiration: 200 * time.Millisecond})
	s.Enqueue(dev)
	s.Enqueue(registry.Key{User: "b", AccountID: "B", DeviceToken: "bb"})
	testutil.WaitFor(t, "both expired", func() bool { return res.byOutcome()[Expired] == 2 })
	if tr.count("bb") > 1 || tr.count("aa11") > 1 {
		t.Errorf("sent %d and %d times", tr.count("aa11"), tr.count("bb"))
	}
	if q, f := s.Depth(); q != 0 || f != 0 {
		t.Errorf("queued %d, in flight %d", q, f)
	}
}

// When APNs cannot be reached, dispatch pauses until the connection's
// backoff allows another attempt; no device's attempt is spent, and a
// queue of 500 devices does not become hundreds of connection attempts.
func TestUnreachableAPNsPausesWithoutSpendingAttempts(t *testing.T) {
	srv := appleServer(t, fakeapns.Options{NoRecord: true})
	srv.RefuseConnections(true)
	var attemptsMu sync.Mutex
	var attempts []time.Time
	c := tokenClientFor(t, srv, ClientOptions{OnConnect: func(error) {
		attemptsMu.Lock()
		attempts = append(attempts, time.Now())
		attemptsMu.Unlock()
	}})
	s, res, hook := startClient(t, c, Options{})
	const n = 500
	for i := range n {
		s.Enqueue(devKey(i))
	}
	testutil.WaitFor(t, "the pause", func() bool { cause, _ := s.Paused(); return cause == PauseUnreachable })
	// Wait for the third attempt to connect and look at when each came:
	// a second or more apart, not one per push.
	testutil.WaitFor(t, "a third attempt to connect", func() bool {
		attemptsMu.Lock()
		defer attemptsMu.Unlock()
		return len(attempts) >= 3
	})
	attemptsMu.Lock()
	for i := 1; i < len(attempts); i++ {
		if gap := attempts[i].Sub(attempts[i-1]); gap < 500*time.Millisecond {
			t.Errorf("attempts to connect %d and %d only %v apart", i-1, i, gap)
		}
	}
	attemptsMu.Unlock()
	if got := srv.Connections(); got > 3 {
		t.Errorf("%d connection attempts in 3 s, want at most 3", got)
	}
	if m := res.byOutcome(); m[Retrying]+m[Failed]+m[Expired] != 0 {
		t.Errorf("outcomes while unreachable: %v", m)
	}
	if q, f := s.Depth(); q+f != n {
		t.Errorf("%d queued and %d in flight, want %d", q, f, n)
	}
	if got := count(hook, logrus.ErrorLevel, "cannot connect to APNs"); got != 1 {
		t.Errorf("logged %d times, want once a minute", got)
	}
	// Shutting down does not wait for a queue that cannot move.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	begin := time.Now()
	srv.RefuseConnections(false)
	testutil.WaitFor(t, "every push delivered", func() bool { return res.byOutcome()[Delivered] == n })
	res.firstAttempts(t)
	if left, err := s.Drain(ctx); err != nil || len(left) != 0 || time.Since(begin) > 5*time.Second {
		t.Errorf("drain: %v %v", left, err)
	}
}

func TestDrainDoesNotWaitForAPausedQueue(t *testing.T) {
	tr := &scripted{answer: func(*apns2.Notification, int) (*apns2.Response, error) {
		return &apns2.Response{StatusCode: 403, Reason: "BadCertificate"}, nil
	}}
	s, res := start(t, tr, Options{ProbeInterval: time.Hour})
	s.Enqueue(dev)
	res.wait(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	begin := time.Now()
	left, err := s.Drain(ctx)
	if err != nil || len(left) != 1 || left[0] != dev || time.Since(begin) > time.Second {
		t.Errorf("Drain = %v, %v after %v", left, err, time.Since(begin))
	}
}

// ExpiredProviderToken: the refused token is renewed and the push goes
// again; a second refusal within 20 minutes of the renewal cannot be met
// with another token (APNs would answer TooManyProviderTokenUpdates), so
// sending pauses until a renewal is allowed. The log names clock skew.
// tokenRecorder is an APNs stand-in that records each new provider
// token in order, and answers ExpiredProviderToken to the first one and
// to any token refused later.
type tokenRecorder struct {
	mu      sync.Mutex
	seen    []string
	refused map[string]bool
}

func newTokenRecorder(t *testing.T) (*fakeapns.Server, *tokenRecorder) {
	rec := &tokenRecorder{refused: map[string]bool{}}
	srv := appleServer(t, fakeapns.Options{Responder: func(r fakeapns.Request) fakeapns.Response {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if len(rec.seen) == 0 || rec.seen[len(rec.seen)-1] != r.Authorization {
			rec.seen = append(rec.seen, r.Authorization)
		}
		if len(rec.seen) == 1 || rec.refused[r.Authorization] {
			rec.refused[r.Authorization] = true
			return fakeapns.Response{Status: 403, Reason: "ExpiredProviderToken"}
		}
		return fakeapns.Response{}
	}})
	return srv, rec
}

func (r *tokenRecorder) tokens() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.seen)
}

func (r *tokenRecorder) refuse(tok string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refused[tok] = true
}

func TestExpiredProviderTokenRenewsTheToken(t *testing.T) {
	srv, rec := newTokenRecorder(t)
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	c := tokenClientFor(t, srv, ClientOptions{})
	// The token was made 45 minutes ago (APNs, whose clock is ahead of
	// this host's, already finds it over an hour old): it may be renewed.
	c.token.tok.IssuedAt = time.Now().Add(-45 * time.Minute).Unix()
	dispatcher := &looks{}
	s, res, hook := startClient(t, c, Options{Now: now, looked: dispatcher.record})
	s.Enqueue(devKey(1))
	testutil.WaitFor(t, "delivery with a new token", func() bool { return res.byOutcome()[Delivered] == 1 })
	seen := rec.tokens()
	if len(seen) != 2 {
		t.Fatalf("%d distinct tokens, want 2", len(seen))
	}
	// The new token is refused as well: too soon for another.
	rec.refuse(seen[1])
	if count(hook, logrus.ErrorLevel, "clock") != 1 {
		t.Error("no error naming the clock")
	}
	s.Enqueue(devKey(2))
	testutil.WaitFor(t, "the pause", func() bool { cause, _ := s.Paused(); return cause == PauseCredential })
	if _, why := s.Paused(); !strings.Contains(why.Error(), "ExpiredProviderToken") || !strings.Contains(why.Error(), "clock") {
		t.Errorf("pause reason %v", why)
	}
	before := srv.Count()
	held := dispatcher.heldCount()
	s.kick() // the dispatcher looks at the queue, as at any event
	dispatcher.waitHeldAfter(t, held)
	if srv.Count() != before {
		t.Errorf("pushes sent while no token may be made")
	}
	// 20 minutes later a token may be made; the probe gets one.
	clock.Add(int64(TokenRenewInterval))
	s.Enqueue(devKey(3)) // wakes the dispatcher, as any event would
	testutil.WaitFor(t, "delivery after the renewal", func() bool { return res.byOutcome()[Delivered] == 3 })
	if n := len(rec.tokens()); n != 3 {
		t.Errorf("%d distinct tokens, want 3", n)
	}
	if cause, _ := s.Paused(); cause != "" {
		t.Errorf("still paused: %s", cause)
	}
}

// Apple's 20 minutes count from the last token made by anyone: a token
// made at start (or by apns2's own renewal) and refused at once is not
// replaced before then, and the pause says when, in UTC.
func TestExpiredProviderTokenYoungerThanTheLimitWaits(t *testing.T) {
	srv, rec := newTokenRecorder(t)
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	c := tokenClientFor(t, srv, ClientOptions{})
	issued := time.Unix(c.token.tok.IssuedAt, 0)
	s, res, _ := startClient(t, c, Options{Now: now})
	s.Enqueue(devKey(1))
	testutil.WaitFor(t, "the pause", func() bool { cause, _ := s.Paused(); return cause == PauseCredential })
	_, why := s.Paused()
	if when := issued.Add(TokenRenewInterval).UTC().Format(time.RFC3339); !strings.Contains(why.Error(), when) {
		t.Errorf("pause reason %q does not say %s (20 minutes after the token was made, UTC)", why, when)
	}
	if n := len(rec.tokens()); n != 1 {
		t.Errorf("%d distinct tokens before the limit, want 1", n)
	}
	clock.Add(int64(TokenRenewInterval))
	s.Enqueue(devKey(2))
	testutil.WaitFor(t, "delivery after the limit", func() bool { return res.byOutcome()[Delivered] == 2 })
	if n := len(rec.tokens()); n != 2 {
		t.Errorf("%d distinct tokens, want 2", n)
	}
}

// A reload of the same .p8 keeps the token: a new one would count as an
// update at Apple.
func TestTokenIsSameOnlyForTheSameKeyKeyIDAndTeam(t *testing.T) {
	a := newTestToken(t)
	tok := NewToken(a)
	like := func(keyID, teamID string) *token.Token {
		return &token.Token{AuthKey: a.AuthKey, KeyID: keyID, TeamID: teamID}
	}
	if !tok.Same(like(a.KeyID, a.TeamID)) {
		t.Error("same key, key id and team: not Same")
	}
	if tok.Same(newTestToken(t)) {
		t.Error("another key is Same")
	}
	if tok.Same(like("ZZZZZZZZZZ", a.TeamID)) {
		t.Error("another key id is Same")
	}
	if tok.Same(like(a.KeyID, "ZZZZZZZZZZ")) {
		t.Error("another team is Same")
	}
	var none *Token
	if none.Same(a) {
		t.Error("nil token is Same")
	}
}

func TestTooManyProviderTokenUpdatesIsAnError(t *testing.T) {
	tr := &scripted{answer: func(_ *apns2.Notification, call int) (*apns2.Response, error) {
		if call == 1 {
			return &apns2.Response{StatusCode: 429, Reason: "TooManyProviderTokenUpdates"}, nil
		}
		return &apns2.Response{StatusCode: 200}, nil
	}}
	log, hook := logtest.NewNullLogger()
	s, res := start(t, tr, Options{Log: log})
	s.Enqueue(dev)
	if r := res.wait(t); r.Outcome != Retrying {
		t.Fatalf("%+v", r)
	}
	if r := res.wait(t); r.Outcome != Delivered {
		t.Fatalf("%+v", r)
	}
	if count(hook, logrus.ErrorLevel, "TooManyProviderTokenUpdates") != 1 {
		t.Errorf("no error line: %v", hook.AllEntries())
	}
}
