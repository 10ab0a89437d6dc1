package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sideshow/apns2"

	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

const testTopic = "com.apple.mail.XServer.0a1b2c3d-4e5f-6789-abcd-ef0123456789"

// client is apns2's client on a Pool: the same requests package apns sends
// (its pusher is held to apns2 by TestPusherSendsWhatApns2Sends).
type client struct {
	*apns2.Client
	pool *Pool
}

// appleServer is the APNs stand-in managing connections as APNs does.
func appleServer(t *testing.T, o fakeapns.Options) *fakeapns.Server {
	t.Helper()
	o.Apple = true
	return fakeapns.StartT(t, o)
}

// tokenClientFor is a token client pointed at srv.
func tokenClientFor(t *testing.T, srv *fakeapns.Server, o Options) *client {
	t.Helper()
	tok, err := testpki.NewProviderToken()
	if err != nil {
		t.Fatal(err)
	}
	o.Roots = srv.CertPool()
	p := New(o, nil)
	t.Cleanup(p.CloseIdleConnections)
	return &client{Client: &apns2.Client{Token: tok, Host: srv.URL, HTTPClient: &http.Client{Transport: p}}, pool: p}
}

// realClient is a certificate client pointed at a stand-in for APNs.
func realClient(t *testing.T, o fakeapns.Options) (*client, *fakeapns.Server) {
	t.Helper()
	srv := fakeapns.StartT(t, o)
	leaf, err := testpki.NewPushCert(testTopic)
	if err != nil {
		t.Fatal(err)
	}
	p := New(Options{Roots: srv.CertPool()}, []tls.Certificate{leaf.TLSCertificate()})
	t.Cleanup(p.CloseIdleConnections)
	return &client{Client: &apns2.Client{Certificate: leaf.TLSCertificate(), Host: srv.URL, HTTPClient: &http.Client{Transport: p}}, pool: p}, srv
}

// push sends one background push as the sender does.
func push(c *client, token string) (*apns2.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.PushWithContext(ctx, &apns2.Notification{
		DeviceToken: token, Topic: testTopic, PushType: apns2.PushTypeBackground,
		Expiration: time.Now().Add(time.Hour), Payload: []byte(`{"aps":{"account-id":"acc-` + token + `"}}`),
	})
}

// pushAll sends n pushes at once and returns the errors and non-200s.
func pushAll(c *client, n int) []error {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := push(c, fmt.Sprintf("%064x", i))
			if err == nil && resp.StatusCode != 200 {
				err = fmt.Errorf("push %d: %d %s", i, resp.StatusCode, resp.Reason)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	var out []error
	for err := range errs {
		out = append(out, err)
	}
	return out
}

// 2,000 pushes at once on a token connection, which APNs allows one
// stream until a request on it succeeds: one connection, and no stream
// over the limit. x/net's own pool opened dozens of connections here.
func TestBurstOnATokenConnectionUsesOneConnection(t *testing.T) {
	srv := appleServer(t, fakeapns.Options{NoRecord: true})
	burst(t, srv, tokenClientFor(t, srv, Options{}), 2000, 1)
}

// burst sends n pushes at once through c and checks that they used
// conns connections and never overran the server's stream limit.
func burst(t *testing.T, srv *fakeapns.Server, c *client, n, conns int) {
	t.Helper()
	if errs := pushAll(c, n); len(errs) > 0 {
		t.Fatalf("%d pushes failed, first: %v", len(errs), errs[0])
	}
	if got := srv.Connections(); got != int64(conns) {
		t.Errorf("%d connections for one credential, want %d", got, conns)
	}
	if v := srv.Violations(); v != 0 {
		t.Errorf("%d streams over the limit the server allowed", v)
	}
	if srv.Count() != int64(n) {
		t.Errorf("server counted %d requests", srv.Count())
	}
}

// A load one connection cannot carry opens another (not sooner than a
// second after the first), up to the pool's size, and no more; each new
// one starts with one stream again.
func TestFullConnectionOpensASecondOneAndNoMore(t *testing.T) {
	srv := appleServer(t, fakeapns.Options{NoRecord: true, MaxConcurrentStreams: 100,
		Responder: func(fakeapns.Request) fakeapns.Response { return fakeapns.Response{Delay: 100 * time.Millisecond} }})
	burst(t, srv, tokenClientFor(t, srv, Options{Connections: 2}), 2000, 2)
}

// heldServer is a stand-in allowing streams per connection that answers
// the first push on each connection at once (so that it is proven) and
// holds every other until release is called.
type heldServer struct {
	*fakeapns.Server
	held    atomic.Int32 // pushes being held
	release func()
}

func startHeld(t *testing.T, streams int) *heldServer {
	t.Helper()
	h := &heldServer{}
	var mu sync.Mutex
	first := map[int64]bool{}
	released := make(chan struct{})
	var once sync.Once
	h.release = func() { once.Do(func() { close(released) }) }
	h.Server = appleServer(t, fakeapns.Options{NoRecord: true, MaxConcurrentStreams: streams,
		Responder: func(r fakeapns.Request) fakeapns.Response {
			mu.Lock()
			seen := first[r.Conn]
			first[r.Conn] = true
			mu.Unlock()
			if seen {
				h.held.Add(1)
				<-released
			}
			return fakeapns.Response{}
		}})
	t.Cleanup(h.release) // before the server closes
	return h
}

// pushAllLater starts pushAll(c, n) and returns where its errors come.
func pushAllLater(c *client, n int) <-chan []error {
	done := make(chan []error, 1)
	go func() { done <- pushAll(c, n) }()
	return done
}

// noErrors fails the test with the first of errs.
func noErrors(t *testing.T, errs []error) {
	t.Helper()
	if len(errs) > 0 {
		t.Fatalf("%d pushes failed, first: %v", len(errs), errs[0])
	}
}

// notDialing fails the test unless p has open connections and is not
// dialing another.
func (p *Pool) notDialing(t *testing.T, open int) {
	t.Helper()
	p.mu.Lock()
	n, dialing := len(p.conns), p.dialing
	p.mu.Unlock()
	if n != open || dialing {
		t.Errorf("%d connections open, dialing another: %t; want %d, not dialing", n, dialing, open)
	}
}

// settled fails the test unless srv accepted conns connections and no
// stream went over its limit.
func settled(t *testing.T, srv *fakeapns.Server, conns int64) {
	t.Helper()
	if n := srv.Connections(); n != conns {
		t.Errorf("%d connections, want %d", n, conns)
	}
	if v := srv.Violations(); v != 0 {
		t.Errorf("%d streams over the limit", v)
	}
}

// waitingPushes counts the pushes waiting in p for a stream.
func (p *Pool) waitingPushes() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.waiting)
}

// While fewer pushes are in flight than the server allows on a
// connection, one connection carries them all, however many the pool
// may open; those that wait for the first 200 open none either.
func TestLowVolumeStaysOnOneConnection(t *testing.T) {
	var arrived atomic.Int32
	firstAnswer := make(chan struct{})
	srv := appleServer(t, fakeapns.Options{NoRecord: true, MaxConcurrentStreams: 50,
		Responder: func(fakeapns.Request) fakeapns.Response {
			if arrived.Add(1) == 1 {
				<-firstAnswer
			}
			return fakeapns.Response{Delay: 10 * time.Millisecond}
		}})
	var once sync.Once
	answer := func() { once.Do(func() { close(firstAnswer) }) }
	t.Cleanup(answer)
	c := tokenClientFor(t, srv, Options{Connections: 4})
	done := pushAllLater(c, 40)
	testutil.WaitFor(t, "pushes to wait for the first answer", func() bool {
		return arrived.Load() == 1 && c.pool.waitingPushes() == 39
	})
	c.pool.notDialing(t, 1)
	answer()
	noErrors(t, <-done)
	for range 5 {
		noErrors(t, pushAll(c, 40))
	}
	settled(t, srv, 1)
}

// A connection at the server's stream limit with pushes waiting opens a
// second, which carries the rest; as those do not fill it, no third.
func TestSaturatedConnectionOpensASecond(t *testing.T) {
	srv := startHeld(t, 10)
	c := tokenClientFor(t, srv.Server, Options{Connections: 4})
	done := pushAllLater(c, 15)
	// One answered on each connection, ten held on the first, the other
	// three on the second.
	testutil.WaitFor(t, "a second connection to take the pushes the first could not", func() bool {
		return srv.Connections() == 2 && srv.held.Load() == 13
	})
	c.pool.notDialing(t, 2)
	srv.release()
	noErrors(t, <-done)
	settled(t, srv.Server, 2)
}

// However long every connection stays full, the pool opens no more than
// its cap: pushes wait for a stream instead.
func TestNeverMoreConnectionsThanTheCap(t *testing.T) {
	srv := startHeld(t, 5)
	c := tokenClientFor(t, srv.Server, Options{Connections: 3})
	done := pushAllLater(c, 40)
	// Three connections, each with one push answered and five held: 22
	// pushes wait.
	testutil.WaitFor(t, "three full connections", func() bool {
		return srv.Connections() == 3 && srv.held.Load() == 15 && c.pool.waitingPushes() == 22
	})
	// A newcomer finds them full: below the cap it would dial.
	more := pushAllLater(c, 1)
	testutil.WaitFor(t, "the newcomer to wait", func() bool { return c.pool.waitingPushes() == 23 })
	c.pool.notDialing(t, 3)
	srv.release()
	noErrors(t, <-done)
	noErrors(t, <-more)
	settled(t, srv.Server, 3)
}

// Once the load has gone, the extra connection closes after
// ExtraIdleTimeout without pushes; the first stays and carries the next.
func TestIdleExtraConnectionsClose(t *testing.T) {
	srv := startHeld(t, 10)
	c := tokenClientFor(t, srv.Server, Options{Connections: 4, ExtraIdleTimeout: 50 * time.Millisecond})
	done := pushAllLater(c, 15)
	testutil.WaitFor(t, "a second connection", func() bool { return srv.Connections() == 2 && srv.held.Load() == 13 })
	srv.release()
	noErrors(t, <-done)
	testutil.WaitFor(t, "the extra connection to close", func() bool {
		return c.pool.Open() == 1 && srv.OpenConnections() == 1
	})
	if resp, err := push(c, "aa"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("push after the extra connection closed: %v %v", resp, err)
	}
	if n := srv.Connections(); n != 2 {
		t.Errorf("%d connections, want 2: the first should have stayed", n)
	}
}

// When another connection cannot be made, the pushes go on over the open
// one: the sender is not paused, and the next attempt waits out the
// delay after a failure instead of following every push that finds the
// connection full.
func TestFailedExtraDialDoesNotMultiply(t *testing.T) {
	srv := startHeld(t, 5)
	var failures atomic.Int32
	c := tokenClientFor(t, srv.Server, Options{Connections: 4, OnConnect: func(err error) {
		if err != nil {
			failures.Add(1)
		}
	}})
	if resp, err := push(c, "aa"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("first push: %v %v", resp, err)
	}
	srv.RefuseConnections(true)
	done := pushAllLater(c, 10)
	testutil.WaitFor(t, "a failed attempt at a second connection", func() bool { return failures.Load() == 1 })
	more := pushAllLater(c, 20)
	testutil.WaitFor(t, "newcomers to wait", func() bool { return c.pool.waitingPushes() == 25 })
	c.pool.mu.Lock()
	open, dialing, retryAt := len(c.pool.conns), c.pool.dialing, c.pool.retryAt
	c.pool.mu.Unlock()
	if open != 1 || (dialing && time.Now().Before(retryAt)) {
		t.Errorf("%d connections open, dialing %t before the delay after a failure ran out", open, dialing)
	}
	if until, err := c.pool.BlockedUntil(); !until.IsZero() {
		t.Errorf("pool unreachable until %v (%v) with a connection open", until, err)
	}
	srv.RefuseConnections(false)
	srv.release()
	noErrors(t, <-done)
	noErrors(t, <-more)
	if v := srv.Violations(); v != 0 {
		t.Errorf("%d streams over the limit", v)
	}
}

// Until APNs has answered a push with 200, a new connection carries one
// push at a time, certificate or not; then as many as it allows.
func TestOnePushInFlightUntilTheFirst200(t *testing.T) {
	var inFlight, maxBefore, maxAfter atomic.Int32
	var answered atomic.Bool
	c, _ := realClient(t, fakeapns.Options{Responder: func(fakeapns.Request) fakeapns.Response {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		peak := &maxAfter
		if !answered.Load() {
			peak = &maxBefore
		}
		for old := peak.Load(); n > old && !peak.CompareAndSwap(old, n); old = peak.Load() {
		}
		time.Sleep(50 * time.Millisecond)
		answered.Store(true)
		return fakeapns.Response{}
	}})
	if errs := pushAll(c, 200); len(errs) > 0 {
		t.Fatalf("%d pushes failed, first: %v", len(errs), errs[0])
	}
	if n := maxBefore.Load(); n != 1 {
		t.Errorf("%d pushes in flight before the first 200, want 1", n)
	}
	if n := maxAfter.Load(); n < 20 {
		t.Errorf("at most %d pushes in flight after the first 200: no ramp-up", n)
	}
}

// After a refusal of the token APNs lowers the limit again: the client
// goes back to one push at a time and does not overrun it.
func TestRefusedTokenGoesBackToOneStream(t *testing.T) {
	var refuse atomic.Bool
	srv := appleServer(t, fakeapns.Options{NoRecord: true, Responder: func(fakeapns.Request) fakeapns.Response {
		if refuse.Load() {
			return fakeapns.Response{Status: 403, Reason: "InvalidProviderToken", Delay: 5 * time.Millisecond}
		}
		return fakeapns.Response{Delay: 5 * time.Millisecond}
	}})
	c := tokenClientFor(t, srv, Options{})
	if errs := pushAll(c, 100); len(errs) > 0 {
		t.Fatal(errs[0])
	}
	refuse.Store(true)
	if errs := pushAll(c, 100); len(errs) != 100 {
		t.Fatalf("%d of 100 refused", len(errs))
	}
	refuse.Store(false)
	if errs := pushAll(c, 100); len(errs) > 0 {
		t.Fatal(errs[0])
	}
	// Pushes that had left for x/net when the refusal came may open their
	// stream just after the client acknowledged the lower limit (x/net
	// checks the limit, then writes); a client that ignored it would
	// overrun it with nearly all of the 100. How many had left depends on
	// the machine's load (13 seen on a busy two-core one).
	if v := srv.Violations(); v > 25 {
		t.Errorf("%d streams over the limit", v)
	}
	if n := srv.Connections(); n != 1 {
		t.Errorf("%d connections", n)
	}
}

// GOAWAY: pushes carry on over a new connection, and none is lost.
func TestGoAwayMovesToANewConnection(t *testing.T) {
	// The GOAWAY comes when the 200th push arrives, while most are still
	// to come.
	var arrived atomic.Int32
	reached := make(chan struct{})
	srv := appleServer(t, fakeapns.Options{NoRecord: true, Responder: func(fakeapns.Request) fakeapns.Response {
		if arrived.Add(1) == 200 {
			close(reached)
		}
		return fakeapns.Response{Delay: 20 * time.Millisecond}
	}})
	c := tokenClientFor(t, srv, Options{})
	done := make(chan []error)
	go func() { done <- pushAll(c, 1000) }()
	select {
	case <-reached:
	case <-time.After(testutil.Patience):
		t.Fatal("200 pushes did not reach the server")
	}
	srv.GoAway("Shutdown")
	if errs := <-done; len(errs) > 0 {
		t.Fatalf("%d pushes failed after GOAWAY, first: %v", len(errs), errs[0])
	}
	if n := srv.Connections(); n != 2 {
		t.Errorf("%d connections, want 2 (the first went away)", n)
	}
	if v := srv.Violations(); v != 0 {
		t.Errorf("%d streams over the limit", v)
	}
	testutil.Wait(5*time.Second, func() bool { return srv.OpenConnections() <= 1 })
	if n := srv.OpenConnections(); n != 1 {
		t.Errorf("%d connections open, want 1", n)
	}
}

// A connection that goes silent (no answers, no PING acknowledgements)
// is found by the health check, closed and replaced; the push on it is
// sent again on the new one.
func TestSilentConnectionIsReplaced(t *testing.T) {
	srv := appleServer(t, fakeapns.Options{})
	c := tokenClientFor(t, srv, Options{ReadIdleTimeout: 100 * time.Millisecond, PingTimeout: 100 * time.Millisecond})
	if resp, err := push(c, "aa"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("first push: %v %v", resp, err)
	}
	srv.SilenceConnections()
	begin := time.Now()
	resp, err := push(c, "bb")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("push over a silent connection: %v %v", resp, err)
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
	if n := srv.Connections(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// Idle connections are closed: by the idle timeout, and when APNs stops
// acknowledging PINGs on a connection without pushes.
func TestIdleConnectionsAreClosed(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  Options
		setup func(*fakeapns.Server)
	}{
		{"idle timeout", Options{IdleTimeout: 200 * time.Millisecond}, func(*fakeapns.Server) {}},
		{"unanswered ping", Options{ReadIdleTimeout: 100 * time.Millisecond, PingTimeout: 100 * time.Millisecond},
			func(s *fakeapns.Server) { s.AnswerPings(false) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := appleServer(t, fakeapns.Options{})
			c := tokenClientFor(t, srv, tc.opts)
			if resp, err := push(c, "aa"); err != nil || resp.StatusCode != 200 {
				t.Fatalf("push: %v %v", resp, err)
			}
			tc.setup(srv)
			testutil.Wait(5*time.Second, func() bool { return srv.OpenConnections() == 0 })
			if n := srv.OpenConnections(); n != 0 {
				t.Fatalf("%d connections still open", n)
			}
			// The closed connection is not counted as open (the metric
			// xapsd_apns_open_connections), though it stays in the pool
			// until a push finds it closed.
			testutil.WaitFor(t, "the pool to count no open connection", func() bool { return c.pool.Open() == 0 })
			srv.AnswerPings(true)
			if resp, err := push(c, "bb"); err != nil || resp.StatusCode != 200 {
				t.Fatalf("push after the close: %v %v", resp, err)
			}
			if n := srv.Connections(); n != 2 {
				t.Errorf("%d connections, want 2", n)
			}
		})
	}
}

// When APNs cannot be reached, the client does not dial for every push:
// pushes fail at once with an *UnreachableError until a growing delay
// has passed. Before, 500 queued devices made 310 connection attempts in
// 20 s against an endpoint that reset handshakes.
func TestUnreachableAPNsIsNotHammered(t *testing.T) {
	srv := appleServer(t, fakeapns.Options{})
	srv.RefuseConnections(true)
	var failures atomic.Int32
	c := tokenClientFor(t, srv, Options{OnConnect: func(err error) {
		if err != nil {
			failures.Add(1)
		}
	}})
	end := time.Now().Add(3 * time.Second)
	var unreachable, pushes int
	var blocked bool // the pool said until when it would not dial
	for time.Now().Before(end) {
		for _, err := range pushAll(c, 500) {
			var ue *UnreachableError
			if errors.As(err, &ue) {
				unreachable++
			}
		}
		pushes += 500
		if until, err := c.pool.BlockedUntil(); !until.IsZero() && err != nil {
			blocked = true
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Attempts at 0 s, then after 0.5–1 s, 1–2 s, 2–4 s: at most 3 in 3 s.
	if n := srv.Connections(); n > 3 || n < 1 {
		t.Errorf("%d connection attempts in 3 s for %d pushes, want 1 to 3", n, pushes)
	}
	if int(failures.Load()) != int(srv.Connections()) {
		t.Errorf("OnConnect saw %d failures, the server %d attempts", failures.Load(), srv.Connections())
	}
	if unreachable < pushes*9/10 {
		t.Errorf("%d of %d pushes failed with UnreachableError", unreachable, pushes)
	}
	// Looked at while pushes were failing, not once after them: at 3 s
	// the delay may just have passed, with the next attempt under way.
	if !blocked {
		t.Fatalf("client never marked unreachable while %d pushes failed", pushes)
	}
	srv.RefuseConnections(false)
	testutil.WaitFor(t, "the delay before the next attempt to pass", func() bool { u, _ := c.pool.BlockedUntil(); return u.IsZero() })
	if resp, err := push(c, "aa"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("push once APNs is back: %v %v", resp, err)
	}
	if until, _ := c.pool.BlockedUntil(); !until.IsZero() {
		t.Errorf("still unreachable until %v after a push went through", until)
	}
}

// Many pushes at once share the connection's writes; every one must still
// reach Apple whole and get its own answer.
func TestClientDeliversConcurrentPushesOverOneConnection(t *testing.T) {
	c, srv := realClient(t, fakeapns.Options{})
	const n = 500
	for _, err := range pushAll(c, n) {
		t.Error(err)
	}
	reqs, err := srv.WaitRequests(n, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range reqs {
		if want := `{"aps":{"account-id":"acc-` + r.Token + `"}}`; string(r.Body) != want {
			t.Fatalf("body %s for token %s, want %s", r.Body, r.Token, want)
		}
		if r.Topic != testTopic || r.PushType != "background" || r.ClientCertSubjectUID != testTopic || r.Proto != "HTTP/2.0" {
			t.Fatalf("request %+v", r)
		}
		// APNs answers a few bytes of JSON: no gzip header on every push.
		if ae := r.Header.Get("Accept-Encoding"); ae != "" {
			t.Fatalf("Accept-Encoding %q sent", ae)
		}
		seen[r.Token] = true
	}
	if len(seen) != n {
		t.Fatalf("%d distinct tokens reached the server, want %d", len(seen), n)
	}
}

// A connection Apple drops fails the pushes on it; they go again at once
// over a new connection.
func TestClientRecoversFromADroppedConnection(t *testing.T) {
	var dropped atomic.Bool
	c, srv := realClient(t, fakeapns.Options{Responder: func(r fakeapns.Request) fakeapns.Response {
		return fakeapns.Response{Drop: r.Token == "aa" && dropped.CompareAndSwap(false, true)}
	}})
	if resp, err := push(c, "bb"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("first push: %v %+v", err, resp)
	}
	resp, err := push(c, "aa")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("push on a dropped connection: %v %+v", err, resp)
	}
	reqs := srv.Requests()
	if len(reqs) != 3 || reqs[1].Token != "aa" || reqs[2].Token != "aa" || reqs[1].Conn != 1 || reqs[2].Conn != 2 {
		t.Errorf("requests: %+v", reqs)
	}
}
