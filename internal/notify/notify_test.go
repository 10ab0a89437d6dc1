package notify

import (
	"context"
	"testing"

	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/registry/registrytest"
)

type calls struct{ delayed, cancelled, sent []registry.Key }

func (c *calls) Delay(k registry.Key)   { c.delayed = append(c.delayed, k) }
func (c *calls) Cancel(k registry.Key)  { c.cancelled = append(c.cancelled, k) }
func (c *calls) Enqueue(k registry.Key) { c.sent = append(c.sent, k) }

func setup(t *testing.T, inboxOnly bool) (*Service, *calls) {
	t.Helper()
	r := registrytest.Open(t, registrytest.Defaults())
	for _, tok := range []string{"aa", "bb"} {
		err := r.Register(context.Background(), registry.Registration{
			Key: registry.Key{User: "alice", AccountID: "ACC", DeviceToken: tok}, Mailboxes: []string{"INBOX", "Lists"}})
		if err != nil {
			t.Fatal(err)
		}
	}
	c := &calls{}
	return &Service{Registry: r, Scheduler: c, Sender: c, InboxOnly: inboxOnly}, c
}

func TestNewMailPushesEveryDeviceNow(t *testing.T) {
	s, c := setup(t, false)
	if st := s.Notify("Alice", "INBOX", []string{"MessageNew"}); st != Pushed {
		t.Fatalf("status %v", st)
	}
	if len(c.sent) != 2 || len(c.cancelled) != 2 || len(c.delayed) != 0 {
		t.Errorf("sent %d cancelled %d delayed %d; want 2 2 0", len(c.sent), len(c.cancelled), len(c.delayed))
	}
}

func TestOtherEventsAreDelayed(t *testing.T) {
	s, c := setup(t, false)
	for _, ev := range [][]string{{"FlagsSet", "MessageRead"}, {"MessageAppend"}, {"MessageExpunge"}, {"messagenew"}} {
		s.Notify("alice", "INBOX", ev)
	}
	if len(c.sent) != 0 || len(c.delayed) != 8 {
		t.Errorf("sent %d delayed %d; want 0 8 (MessageNew is case-sensitive)", len(c.sent), len(c.delayed))
	}
}

func TestMailboxRulesDecideWhatAnEventWakes(t *testing.T) {
	s, _ := setup(t, false)
	cases := []struct {
		user, mailbox string
		inboxOnly     bool
		want          Status
	}{
		{"alice", "Lists", false, Pushed},
		{"alice", "Trash", false, NoMailbox},
		{"bob", "INBOX", false, UnknownUser},
		{"alice", "Lists", true, Ignored},
		{"bob", "Lists", true, Ignored},
		{"alice", "INBOX", true, Pushed},
		{"bob", "INBOX", true, UnknownUser},
	}
	for _, c := range cases {
		s.InboxOnly = c.inboxOnly
		if got := s.Notify(c.user, c.mailbox, []string{"MessageNew"}); got != c.want {
			t.Errorf("Notify(%s, %s, inboxOnly=%v) = %v, want %v", c.user, c.mailbox, c.inboxOnly, got, c.want)
		}
	}
}

type recorded struct{ user, mailbox, result string }

type recorder []recorded

func (r *recorder) Notified(user, mailbox string, _ []string, result string) {
	*r = append(*r, recorded{user, mailbox, result})
}

// Every event is recorded for xapsd diagnose under the folded user name,
// with what became of it.
func TestEveryEventIsRecordedWithItsResult(t *testing.T) {
	s, _ := setup(t, false)
	var rec recorder
	s.History = &rec
	s.Notify("Alice", "INBOX", []string{"MessageNew"})
	s.Notify("alice", "Lists", []string{"FlagsSet"})
	s.Notify("alice", "Trash", []string{"MessageNew"})
	s.Notify("alice@example.org", "INBOX", []string{"MessageNew"})
	s.InboxOnly = true
	s.Notify("alice", "Lists", []string{"MessageNew"})
	want := recorder{{"alice", "INBOX", ResultPushed}, {"alice", "Lists", ResultDelayed}, {"alice", "Trash", ResultNoMailbox},
		{"alice@example.org", "INBOX", ResultNoDevice}, {"alice", "Lists", ResultIgnored}}
	if len(rec) != len(want) {
		t.Fatalf("recorded %+v", rec)
	}
	for i := range want {
		if rec[i] != want[i] {
			t.Errorf("event %d: recorded %+v, want %+v", i, rec[i], want[i])
		}
	}
}
