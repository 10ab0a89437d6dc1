package scheduler

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/testutil"
)

type recorder struct {
	mu   sync.Mutex
	keys []registry.Key
}

func (r *recorder) Enqueue(k registry.Key) { r.mu.Lock(); r.keys = append(r.keys, k); r.mu.Unlock() }
func (r *recorder) n() int                 { r.mu.Lock(); defer r.mu.Unlock(); return len(r.keys) }

type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time { return c.t }

var (
	a = registry.Key{User: "u", AccountID: "A", DeviceToken: "aa"}
	b = registry.Key{User: "u", AccountID: "B", DeviceToken: "bb"}
)

func TestDelayedPushGoesStrictlyAfterTheLastActivity(t *testing.T) {
	c := &fakeClock{t: time.Unix(1000, 0)}
	rec := &recorder{}
	s := New(Options{Delay: 30 * time.Second, CheckInterval: 20 * time.Second, Sender: rec, Now: c.Now})
	s.Delay(a)
	c.t = c.t.Add(20 * time.Second)
	s.Delay(a) // activity postpones the push
	s.Delay(b)
	c.t = c.t.Add(30 * time.Second)
	if n := s.Tick(); n != 0 {
		t.Fatalf("pushed %d entries exactly at the delay; the rule is strictly older", n)
	}
	c.t = c.t.Add(time.Second)
	if n := s.Tick(); n != 2 || rec.n() != 2 {
		t.Fatalf("Tick sent %d (recorded %d), want 2", n, rec.n())
	}
	if s.Tick() != 0 || s.Len() != 0 {
		t.Error("an entry was pushed twice")
	}
}

func TestCancelAbsorbsPending(t *testing.T) {
	c := &fakeClock{t: time.Unix(1000, 0)}
	rec := &recorder{}
	s := New(Options{Delay: time.Second, CheckInterval: time.Second, Sender: rec, Now: c.Now})
	s.Delay(a)
	s.Delay(b)
	s.Cancel(a)
	c.t = c.t.Add(time.Hour)
	s.Tick()
	if rec.n() != 1 || rec.keys[0] != b {
		t.Errorf("sent %v, want only b", rec.keys)
	}
}

func TestFlushSendsEverythingAtOnce(t *testing.T) {
	rec := &recorder{}
	s := New(Options{Delay: time.Hour, CheckInterval: time.Hour, Sender: rec})
	s.Delay(a)
	s.Delay(b)
	if n := s.Flush(); n != 2 || rec.n() != 2 || s.Len() != 0 {
		t.Errorf("Flush = %d, sent %d, left %d", n, rec.n(), s.Len())
	}
}

func TestRunTicksUntilCancelled(t *testing.T) {
	rec := &recorder{}
	s := New(Options{Delay: time.Millisecond, CheckInterval: 5 * time.Millisecond, Sender: rec})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	s.Delay(a)
	testutil.Wait(5*time.Second, func() bool { return rec.n() > 0 })
	cancel()
	<-done
	if rec.n() != 1 {
		t.Fatalf("Run sent %d pushes, want 1", rec.n())
	}
}

// Pending tells xapsd diagnose that a delayed push waits, since when, and
// when it goes at the latest; once sent or cancelled, nothing waits.
func TestPendingSaysWhenTheDelayedPushGoes(t *testing.T) {
	c := &fakeClock{t: time.Unix(1000, 0)}
	s := New(Options{Delay: 30 * time.Second, CheckInterval: 20 * time.Second, Sender: &recorder{}, Now: c.Now})
	if _, ok := s.Pending(a); ok {
		t.Fatal("pending before any change")
	}
	s.Delay(a)
	last, ok := s.Pending(a)
	if !ok || !last.Equal(c.t) || !s.Due(last).Equal(c.t.Add(50*time.Second)) {
		t.Errorf("pending %v %v, due %v", last, ok, s.Due(last))
	}
	s.Cancel(a)
	if _, ok := s.Pending(a); ok {
		t.Error("pending after Cancel")
	}
}
