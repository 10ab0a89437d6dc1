package apns

import (
	"testing"
	"time"
)

// A push gets at least PushTimeout and at most PushTimeout and the
// slack; pushes that start together share a context, and a later one
// gets a new context.
func TestPushDeadlinesBoundEachPush(t *testing.T) {
	var d pushDeadlines
	before := time.Now()
	ctx := d.context()
	after := time.Now()
	deadline, ok := ctx.Deadline()
	if !ok || deadline.Before(before.Add(PushTimeout+pushDeadlineSlack)) || deadline.After(after.Add(PushTimeout+pushDeadlineSlack)) {
		t.Fatalf("deadline %v, want PushTimeout and the slack after %v", deadline, before)
	}
	if d.context() != ctx && time.Since(before) < pushDeadlineSlack {
		t.Error("a push that started with another got a context of its own")
	}
	d.mu.Lock()
	d.until = time.Now() // the slack has passed
	d.mu.Unlock()
	later := d.context()
	if later == ctx {
		t.Fatal("a push that started after the slack shares the earlier context")
	}
	if dl, _ := later.Deadline(); !dl.After(deadline) {
		t.Errorf("later deadline %v not after %v", dl, deadline)
	}
	if ctx.Err() != nil || later.Err() != nil {
		t.Error("a context ended before its deadline")
	}
}
