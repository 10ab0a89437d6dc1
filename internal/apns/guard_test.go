package apns

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
)

// removed records the registrations the sender deletes.
type removed struct {
	mu   sync.Mutex
	keys map[registry.Key]bool
}

func (r *removed) Remove(_ context.Context, k registry.Key, before time.Time) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.keys == nil {
		r.keys = map[registry.Key]bool{}
	}
	r.keys[k] = true
	return false, nil
}

func (r *removed) n() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.keys)
}

// deadTokenServer answers BadDeviceToken for dead's token, 200 otherwise.
func deadTokenServer(t *testing.T, dead registry.Key) *fakeapns.Server {
	return appleServer(t, fakeapns.Options{Responder: func(r fakeapns.Request) fakeapns.Response {
		if r.Token == dead.DeviceToken {
			return fakeapns.Response{Status: 400, Reason: "BadDeviceToken"}
		}
		return fakeapns.Response{}
	}})
}

// One dead device among working ones: BadDeviceToken deletes it.
func TestBadDeviceTokenDeletesARareDeadDevice(t *testing.T) {
	dead := devKey(99)
	srv := deadTokenServer(t, dead)
	rm := &removed{}
	s, res, _ := startClient(t, certClientFor(t, srv), Options{Remover: rm, TrustAfterChange: time.Nanosecond})
	for i := range 20 {
		s.Enqueue(devKey(i))
	}
	testutil.WaitFor(t, "20 delivered", func() bool { return res.byOutcome()[Delivered] == 20 })
	s.Enqueue(dead)
	testutil.WaitFor(t, "the dead device's answer", func() bool { return len(res.byOutcome()) == 2 })
	if m := res.byOutcome(); m[Removed] != 1 || rm.n() != 1 || !rm.keys[dead] {
		t.Errorf("outcomes %v, removed %v", m, rm.keys)
	}
}

// apnsEndpoint: development with production tokens (or the reverse, or a
// credential of another environment): every device answers
// BadDeviceToken. None is deleted, each push counts as failed, and one
// error names the likely cause.
func TestWrongEnvironmentDoesNotEmptyTheRegistry(t *testing.T) {
	srv := appleServer(t, fakeapns.Options{Responder: func(fakeapns.Request) fakeapns.Response {
		return fakeapns.Response{Status: 400, Reason: "BadDeviceToken"}
	}})
	rm := &removed{}
	s, res, hook := startClient(t, certClientFor(t, srv), Options{Remover: rm, TrustAfterChange: time.Nanosecond})
	const n = 30
	for i := range n {
		s.Enqueue(devKey(i))
	}
	testutil.WaitFor(t, "every answer", func() bool { return res.byOutcome()[Failed] == n })
	if rm.n() != 0 {
		t.Errorf("%d registrations deleted", rm.n())
	}
	if got := count(hook, logrus.ErrorLevel, "environment"); got != 1 {
		t.Errorf("%d error lines naming the environment, want 1", got)
	}
}

// Right after a credential change, BadDeviceToken deletes nothing even
// when it is rare: a wrong certificate picked up by the file watcher
// must not start deleting devices. Later it deletes again.
func TestBadDeviceTokenJustAfterACredentialChangeKeepsTheDevice(t *testing.T) {
	dead := devKey(99)
	srv := deadTokenServer(t, dead)
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	rm := &removed{}
	c := certClientFor(t, srv)
	s, res, _ := startClient(t, c, Options{Remover: rm, TrustAfterChange: time.Hour,
		Now: func() time.Time { return time.Unix(0, clock.Load()) }})
	clock.Add(int64(2 * time.Hour))
	s.SetClient(c) // a reload
	for i := range 20 {
		s.Enqueue(devKey(i))
	}
	testutil.WaitFor(t, "20 delivered", func() bool { return res.byOutcome()[Delivered] == 20 })
	s.Enqueue(dead)
	testutil.WaitFor(t, "the answer", func() bool { return res.byOutcome()[Failed] == 1 })
	if rm.n() != 0 {
		t.Fatalf("deleted %v within the hour after a credential change", rm.keys)
	}
	clock.Add(int64(time.Hour))
	s.Enqueue(dead)
	testutil.WaitFor(t, "the answer", func() bool { return res.byOutcome()[Removed] == 1 })
}

// Twenty events 100 ms apart for one phone: with a minimum interval of a
// second they make three pushes, not twenty. Another phone is not
// delayed by it, and a shutdown sends what waits.
func TestPushesToOneDeviceArePaced(t *testing.T) {
	srv := appleServer(t, fakeapns.Options{})
	s, res, _ := startClient(t, certClientFor(t, srv), Options{MinInterval: time.Second})
	phone := devKey(1)
	start := time.Now()
	var span time.Duration // from the first event to the last
	for range 20 {
		s.Enqueue(phone)
		span = time.Since(start)
		time.Sleep(100 * time.Millisecond)
	}
	// On a busy machine the 20 events take longer than 1.9 s; what is
	// promised is the first push at once, then one per interval.
	testutil.WaitFor(t, "the last push", func() bool { q, f := s.Depth(); return q == 0 && f == 0 })
	if n, most := srv.Count(), int64(span/time.Second)+2; n < 2 || n > most {
		t.Errorf("%d pushes for 20 events in %v with a 1 s interval, want 2 to %d", n, span.Round(time.Millisecond), most)
	}
	reqs := srv.Requests()
	for i := 1; i < len(reqs); i++ {
		if gap := reqs[i].Received.Sub(reqs[i-1].Received); gap < 900*time.Millisecond {
			t.Errorf("pushes %d and %d only %v apart", i-1, i, gap)
		}
	}
	other := devKey(2)
	begin := time.Now()
	s.Enqueue(other)
	testutil.WaitFor(t, "the other phone's push", func() bool { return srv.Count() == int64(len(reqs))+1 })
	if d := time.Since(begin); d > 500*time.Millisecond {
		t.Errorf("another phone waited %v", d)
	}
	// The first phone waits again; a shutdown does not keep it waiting.
	// (Its answer is counted a moment after APNs has the push.)
	testutil.WaitFor(t, "the other phone's answer", func() bool { return res.byOutcome()[Delivered] == len(reqs)+1 })
	before := res.byOutcome()[Delivered]
	s.Enqueue(other)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if left, err := s.Drain(ctx); err != nil || len(left) != 0 {
		t.Fatalf("drain: %v %v", left, err)
	}
	if got := res.byOutcome()[Delivered]; got != before+1 {
		t.Errorf("%d pushes at shutdown, want 1", got-before)
	}
}
