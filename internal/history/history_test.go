package history

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is a settable time for the tests.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { c.t = c.t.Add(time.Second); return c.t }

// fnv64 is FNV-1a: the tests place users the same way in every run.
func fnv64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

func newTest(o Options) (*History, *clock) {
	c := &clock{t: time.Date(2026, 5, 4, 3, 2, 1, 0, time.UTC)}
	o.Now = c.now
	h := New(o)
	h.hash = fnv64
	return h, c
}

// kept counts the users the history holds.
func (h *History) kept() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, set := range h.sets {
		for _, s := range set {
			if s.log != nil {
				n++
			}
		}
	}
	return n
}

func TestKeepsTheLastFewEventsNewestFirst(t *testing.T) {
	h, _ := newTest(Options{})
	for i := range PerUser + 2 {
		h.Notified("alice", fmt.Sprintf("box%d", i), []string{"MessageNew"}, "pushed")
	}
	u, ok := h.User("alice")
	if !ok || len(u.Events) != PerUser {
		t.Fatalf("got %v %+v", ok, u)
	}
	for i, want := range []string{"box5", "box4", "box3", "box2"} {
		if u.Events[i].Mailbox != want || u.Events[i].Result != "pushed" {
			t.Errorf("event %d: %+v, want mailbox %s", i, u.Events[i], want)
		}
	}
	if !u.Events[0].Time.After(u.Events[1].Time) {
		t.Errorf("not newest first: %v, %v", u.Events[0].Time, u.Events[1].Time)
	}
	if _, ok := h.User("bob"); ok {
		t.Error("a user never seen is known")
	}
}

// What one /notify can make it keep is bounded: a few event names (the
// rest counted) and a cut mailbox name that does not hold on to the
// request's string.
func TestBoundsWhatOneEventKeeps(t *testing.T) {
	h, _ := newTest(Options{})
	events := []string{"FlagsSet", "FlagsClear", "MessageRead", "MessageTrash", "MessageExpunge", "MessageNew"}
	long := strings.Repeat("x", 1000)
	h.Notified("alice", long, events, "delayed")
	u, _ := h.User("alice")
	e := u.Events[0]
	if len(e.Events) != maxEvents || e.More != 2 || e.Events[0] != "FlagsSet" {
		t.Errorf("events %q, more %d", e.Events, e.More)
	}
	if len(e.Mailbox) != maxMailbox {
		t.Errorf("mailbox of %d bytes kept", len(e.Mailbox))
	}
}

func TestLastPushPerDeviceBounded(t *testing.T) {
	h, _ := newTest(Options{})
	h.Pushed("alice", "ACC", "t1", "retrying", 503, "ServiceUnavailable")
	h.Pushed("alice", "ACC", "t1", "delivered", 200, "")
	h.Pushed("alice", "ACC", "t2", "failed", 400, "BadDeviceToken")
	u, _ := h.User("alice")
	if len(u.Pushes) != 2 || u.Pushes[0].Token != "t2" || u.Pushes[1].Outcome != "delivered" {
		t.Fatalf("pushes %+v", u.Pushes)
	}
	for i := range Devices - 2 {
		h.Pushed("alice", "ACC", fmt.Sprint("t", i+3), "delivered", 200, "")
	}
	// One device more takes the place of the one pushed longest ago.
	h.Pushed("alice", "ACC", "new", "delivered", 200, "")
	u, _ = h.User("alice")
	if len(u.Pushes) != Devices || u.Pushes[0].Token != "new" || u.Pushes[Devices-1].Token != "t2" {
		t.Errorf("pushes %+v", u.Pushes)
	}
}

// However many users notify, at most MaxUsers are kept (rounded down to
// a power of two), mostly the recently active ones: a user is forgotten
// when two users more recently active than it share its set.
func TestBoundedUsersKeepsTheRecentOnes(t *testing.T) {
	h, _ := newTest(Options{MaxUsers: 1000}) // 512 places
	for i := range 10000 {
		h.Notified(fmt.Sprintf("user%d", i), "INBOX", []string{"MessageNew"}, "no device")
	}
	if n := h.kept(); n != 512 {
		t.Errorf("%d users kept, want 512", n)
	}
	recent := 0
	for i := 10000 - 256; i < 10000; i++ {
		if _, ok := h.User(fmt.Sprintf("user%d", i)); ok {
			recent++
		}
	}
	t.Logf("%d of the last 256 users kept", recent)
	if recent < 230 {
		t.Errorf("%d of the last 256 users kept, want nearly all", recent)
	}
	if _, ok := h.User("user0"); ok {
		t.Error("user0, the first of 10,000, still known")
	}
	// A user active again and again is kept while others come and go.
	for i := range 10000 {
		h.Notified(fmt.Sprintf("other%d", i), "INBOX", nil, "no device")
		if i%50 == 0 {
			h.Notified("regular", "INBOX", nil, "pushed")
		}
	}
	if u, ok := h.User("regular"); !ok || len(u.Events) != PerUser {
		t.Errorf("a regularly active user was forgotten: %+v", u)
	}
}

// A reused record carries nothing of the user it held before.
func TestReusedRecordsStartEmpty(t *testing.T) {
	h, _ := newTest(Options{MaxUsers: 4})
	h.Pushed("alice", "A", "t", "delivered", 200, "")
	h.Notified("alice", "INBOX", []string{"MessageNew"}, "pushed")
	for i := range 10 {
		h.Notified(fmt.Sprintf("u%d", i), "Other", []string{"FlagsSet"}, "delayed")
	}
	u, _ := h.User("u9")
	if len(u.Pushes) != 0 || len(u.Events) != 1 || u.Events[0].Mailbox != "Other" {
		t.Errorf("reused record: %+v", u)
	}
}

func TestLookAlikesDifferInCaseOrDomainOnly(t *testing.T) {
	h, _ := newTest(Options{})
	for _, u := range []string{"alice", "alice@example.org", "alice@other.example", "alicia@example.org", "bob@example.org", "ALICE@EXAMPLE.NET"} {
		h.Notified(u, "INBOX", []string{"MessageNew"}, "no device")
	}
	var got []string
	for _, u := range h.LookAlikes("alice@example.org") {
		got = append(got, u.Name)
	}
	want := map[string]bool{"alice": true, "alice@other.example": true, "ALICE@EXAMPLE.NET": true}
	if len(got) != len(want) {
		t.Fatalf("look-alikes %q", got)
	}
	for _, g := range got {
		if !want[g] {
			t.Errorf("%s is not a look-alike of alice@example.org", g)
		}
	}
}

// Recording allocates nothing once the history is warm, also while users
// come and go: the /notify path must not pay for it in garbage.
func TestRecordingDoesNotAllocateWhenWarm(t *testing.T) {
	h := New(Options{MaxUsers: 64})
	names := make([]string, 200)
	for i := range names {
		names[i] = fmt.Sprintf("user%d@example.org", i)
	}
	events := []string{"MessageNew"}
	i := 0
	record := func() {
		h.Notified(names[i%len(names)], "INBOX", events, "pushed")
		h.Pushed(names[i%len(names)], "ACC", "token", "delivered", 200, "")
		i++
	}
	for range 1000 {
		record()
	}
	if n := testing.AllocsPerRun(1000, record); n != 0 {
		t.Errorf("%.1f allocations per notify and push", n)
	}
}

// Two users of one set are both kept; a third takes the place of the one
// active longest ago.
func TestTheLeastRecentlyActiveOfASetGoes(t *testing.T) {
	h, _ := newTest(Options{MaxUsers: 2}) // one set
	h.Notified("a", "INBOX", nil, "pushed")
	h.Notified("b", "INBOX", nil, "pushed")
	h.Pushed("a", "ACC", "t", "delivered", 200, "") // a is active again
	h.Notified("c", "INBOX", nil, "pushed")
	for user, want := range map[string]bool{"a": true, "b": false, "c": true} {
		if _, ok := h.User(user); ok != want {
			t.Errorf("%s kept: %v, want %v", user, ok, want)
		}
	}
}

func TestConcurrentUseIsSafe(t *testing.T) {
	h := New(Options{MaxUsers: 16})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				u := fmt.Sprintf("u%d@d%d", i%20, g)
				h.Notified(u, "INBOX", []string{"MessageNew"}, "pushed")
				h.Pushed(u, "A", "t", "delivered", 200, "")
				h.User(u)
				h.LookAlikes(u)
			}
		}()
	}
	wg.Wait()
}

// BenchmarkNotified records events of users in turn: 2,000 users, all
// known after the first round (the usual case), and 20,000, twice the
// default MaxUsers, so that users are forgotten and records reused all
// the time.
func BenchmarkNotified(b *testing.B) {
	for _, users := range []int{2000, 20000} {
		b.Run(fmt.Sprintf("users=%d", users), func(b *testing.B) {
			h := New(Options{})
			names := make([]string, users)
			for i := range names {
				names[i] = fmt.Sprintf("user%d@example.org", i)
			}
			events := []string{"MessageNew"}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				h.Notified(names[i%len(names)], "INBOX", events, "pushed")
				i++
			}
		})
	}
}
