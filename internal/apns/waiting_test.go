package apns

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/sideshow/apns2"

	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
)

// Waiting says what holds a push back, for xapsd diagnose: pacing, a
// retry, a pause, or nothing (in flight, or not waiting at all).
func TestWaitingSaysWhatHoldsAPushBack(t *testing.T) {
	tr := &scripted{}
	s, res := start(t, tr, Options{MinInterval: time.Hour})
	if _, ok := s.Waiting(dev); ok {
		t.Fatal("a device never pushed waits")
	}
	s.Enqueue(dev)
	res.wait(t)
	s.Enqueue(dev) // within MinInterval of the first
	w, ok := s.Waiting(dev)
	if !ok || w.Why != WaitPacing || w.Until.Before(time.Now().Add(59*time.Minute)) {
		t.Errorf("paced push: %+v %v", w, ok)
	}

	tr2 := &scripted{answer: func(*apns2.Notification, int) (*apns2.Response, error) {
		return &apns2.Response{StatusCode: http.StatusServiceUnavailable, Reason: "ServiceUnavailable"}, nil
	}}
	s2, res2 := start(t, tr2, Options{MinBackoff: time.Hour, MaxBackoff: 2 * time.Hour})
	s2.Enqueue(dev)
	if r := res2.wait(t); r.Outcome != Retrying {
		t.Fatalf("outcome %s", r.Outcome)
	}
	testutil.WaitFor(t, "the retry to be scheduled", func() bool { w, _ := s2.Waiting(dev); return w.Why == WaitRetry })
	if w, _ := s2.Waiting(dev); w.Attempt != 1 || w.Until.Before(time.Now().Add(29*time.Minute)) {
		t.Errorf("retry: %+v", w)
	}

	release := make(chan struct{})
	tr3 := &scripted{release: release}
	s3, res3 := start(t, tr3, Options{})
	s3.Enqueue(dev)
	testutil.WaitFor(t, "the push to be in flight", func() bool { w, _ := s3.Waiting(dev); return w.Why == WaitInFlight })
	close(release)
	res3.wait(t)
	testutil.WaitFor(t, "the push to be done", func() bool { _, ok := s3.Waiting(dev); return !ok })
}

// While APNs refuses the credential, a queued push waits for the pause.
func TestWaitingSaysPausedWhileAPNsRefusesTheCredential(t *testing.T) {
	tr := &scripted{answer: func(*apns2.Notification, int) (*apns2.Response, error) {
		return &apns2.Response{StatusCode: http.StatusForbidden, Reason: apns2.ReasonBadCertificate}, nil
	}}
	s, res := start(t, tr, Options{ProbeInterval: time.Hour})
	s.Enqueue(dev)
	res.wait(t)
	other := registry.Key{User: "bob", AccountID: "B", DeviceToken: "bb22"}
	s.Enqueue(other)
	testutil.WaitFor(t, "the queue to pause", func() bool { w, _ := s.Waiting(other); return w.Why == WaitPaused })
}

// Reach: an open connection counts; without one it connects once; a
// stand-in that refuses connections is unreachable; dry-run sends nothing.
func TestReachSaysConnectedReachableUnreachableOrDryRun(t *testing.T) {
	srv := appleServer(t, fakeapns.Options{})
	c := tokenClientFor(t, srv, ClientOptions{})
	if r := c.Reach(context.Background()); r.State != ReachReachable || r.Err != nil {
		t.Errorf("no connection yet: %+v", r)
	}
	if n := c.pool.Open(); n != 0 {
		t.Errorf("Reach left %d connections in the pool", n)
	}
	if resp, err := push(c, "aa"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("push: %v %v", resp, err)
	}
	if r := c.Reach(context.Background()); r.State != ReachConnected {
		t.Errorf("after a push: %+v", r)
	}
	c.CloseIdle()
	srv.RefuseConnections(true)
	if r := c.Reach(context.Background()); r.State != ReachUnreachable || r.Err == nil {
		t.Errorf("refused: %+v", r)
	}
	if r := NewDryRunClient(testTopic, nil).Reach(context.Background()); r.State != ReachDryRun {
		t.Errorf("dry-run: %+v", r)
	}
}
