// Package history remembers, in memory, what xapsd saw lately for each
// user: the last few /notify events (when, which mailbox, which events,
// what xapsd did with them) and the last push to each of the user's
// devices (when, the outcome, Apple's status and reason). `xapsd
// diagnose` reads it to show where the chain from a delivery to the phone
// breaks, including events that arrive under a user name other than the
// one the phone registered with.
//
// It is bounded whatever the traffic: PerUser events and Devices pushes
// per user, and at most MaxUsers users, the most recently active ones.
// Users are kept in two generations of MaxUsers/2: when the newer one is
// full, the older one is forgotten and its records are reused, so that
// recording allocates nothing once warm. A restart forgets everything;
// this is a diagnostic aid, not a log.
//
// Recording costs one mutex, one map lookup and a few stores, which the
// /notify path can afford (make bench measures it).
package history

import (
	"slices"
	"strings"
	"sync"
	"time"
)

// Limits of one History; Options can lower or raise them.
const (
	DefaultPerUser  = 4
	DefaultDevices  = 8
	DefaultMaxUsers = 10000
	// maxEvents is how many event names of one /notify are kept; the
	// rest are counted.
	maxEvents = 4
	// maxMailbox is the longest mailbox name kept as it is; longer ones
	// are cut (and copied, so as not to keep the request's whole string).
	maxMailbox = 128
)

// Event is one /notify as xapsd handled it.
type Event struct {
	Time    time.Time
	Mailbox string
	Events  []string // the first few event names
	More    int      // event names beyond those
	Result  string   // what xapsd did with it (notify's words)
}

// Push is the last attempt to push to one device.
type Push struct {
	Time      time.Time
	AccountID string
	Token     string
	Outcome   string // apns.Outcome
	Status    int    // Apple's HTTP status; 0 when there was no answer
	Reason    string // Apple's reason, or why there was no answer
}

// User is what is known of one user name.
type User struct {
	Name   string
	Events []Event // newest first
	Pushes []Push  // newest first
}

// Options bounds a History; zero values take the defaults.
type Options struct {
	PerUser  int
	Devices  int
	MaxUsers int
	Now      func() time.Time
}

// record is the fixed-size form of an Event.
type record struct {
	at      int64 // unix nanoseconds; 0: empty slot
	mailbox string
	events  [maxEvents]string
	n       int // event names in total
	result  string
}

type pushRecord struct {
	at               int64
	accountID, token string
	outcome, reason  string
	status           int
}

type userLog struct {
	name   string
	since  int64    // when it became name's: older records are a previous user's
	events []record // a ring of PerUser, next is the oldest slot
	next   int
	pushes []pushRecord // at most Devices, one per device
}

// History is safe for concurrent use.
type History struct {
	opts Options

	mu        sync.Mutex
	cur, prev map[string]*userLog
	free      []*userLog // records of a forgotten generation, for reuse
}

// New returns an empty History.
func New(o Options) *History {
	if o.PerUser <= 0 {
		o.PerUser = DefaultPerUser
	}
	if o.Devices <= 0 {
		o.Devices = DefaultDevices
	}
	if o.MaxUsers < 2 {
		o.MaxUsers = DefaultMaxUsers
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	half := o.MaxUsers / 2
	return &History{opts: o, cur: make(map[string]*userLog, half), prev: make(map[string]*userLog, half)}
}

// logLocked returns user's log, making it the newest generation's; now
// is the time of what is about to be recorded.
func (h *History) logLocked(user string, now int64) *userLog {
	if l, ok := h.cur[user]; ok {
		return l
	}
	l, ok := h.prev[user]
	if ok {
		delete(h.prev, user)
	} else if n := len(h.free); n > 0 {
		l = h.free[n-1]
		h.free[n-1] = nil
		h.free = h.free[:n-1]
		l.reset(user, now)
	} else {
		l = &userLog{name: user, since: now, events: make([]record, h.opts.PerUser), pushes: make([]pushRecord, 0, h.opts.Devices)}
	}
	if len(h.cur) >= h.opts.MaxUsers/2 {
		// The older generation is forgotten; its records are reused.
		for _, old := range h.prev {
			h.free = append(h.free, old)
		}
		clear(h.prev)
		h.cur, h.prev = h.prev, h.cur
	}
	h.cur[user] = l
	return l
}

// reset makes l user's, empty, without touching its records: those from
// before since are another user's and are overwritten as new ones come.
// Recording a new user costs no extra cache misses that way.
func (l *userLog) reset(user string, now int64) {
	l.name, l.since, l.next = user, now, 0
	l.pushes = l.pushes[:0]
}

// Notified records a /notify for user: the mailbox, the event names and
// what xapsd did with it (result).
func (h *History) Notified(user, mailbox string, events []string, result string) {
	if len(mailbox) > maxMailbox {
		mailbox = strings.Clone(mailbox[:maxMailbox])
	}
	now := h.opts.Now().UnixNano()
	h.mu.Lock()
	l := h.logLocked(user, now)
	r := &l.events[l.next]
	l.next = (l.next + 1) % len(l.events)
	r.at, r.mailbox, r.result, r.n = now, mailbox, result, len(events)
	r.events = [maxEvents]string{}
	copy(r.events[:], events)
	h.mu.Unlock()
}

// Pushed records an attempt to push to one of user's devices.
func (h *History) Pushed(user, accountID, token, outcome string, status int, reason string) {
	now := h.opts.Now().UnixNano()
	h.mu.Lock()
	l := h.logLocked(user, now)
	slot := -1
	for i := range l.pushes {
		if l.pushes[i].token == token && l.pushes[i].accountID == accountID {
			slot = i
			break
		}
	}
	switch {
	case slot >= 0:
	case len(l.pushes) < h.opts.Devices:
		l.pushes = append(l.pushes, pushRecord{})
		slot = len(l.pushes) - 1
	default:
		slot = 0 // the device pushed longest ago makes room
		for i := range l.pushes {
			if l.pushes[i].at < l.pushes[slot].at {
				slot = i
			}
		}
	}
	l.pushes[slot] = pushRecord{at: now, accountID: accountID, token: token, outcome: outcome, status: status, reason: reason}
	h.mu.Unlock()
}

// User returns what is known of user, and whether anything is.
func (h *History) User(user string) (User, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	l, ok := h.cur[user]
	if !ok {
		l, ok = h.prev[user]
	}
	if !ok {
		return User{}, false
	}
	return l.export(), true
}

// LookAlikes returns the users known here whose name looks like user's
// but is another: the same local part (before the last @) with another
// domain or none, ignoring ASCII case. They are what a delivery address
// and an IMAP login name that differ look like.
func (h *History) LookAlikes(user string) []User {
	local := LocalPart(user)
	var out []User
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, gen := range []map[string]*userLog{h.cur, h.prev} {
		for name, l := range gen {
			if name != user && strings.EqualFold(LocalPart(name), local) {
				out = append(out, l.export())
			}
		}
	}
	return out
}

// LocalPart is a user name up to its last @, or all of it.
func LocalPart(user string) string {
	if i := strings.LastIndexByte(user, '@'); i >= 0 {
		return user[:i]
	}
	return user
}

func (l *userLog) export() User {
	u := User{Name: l.name}
	for i := range l.events {
		r := l.events[(l.next-1-i+2*len(l.events))%len(l.events)]
		if r.at == 0 || r.at < l.since {
			break // empty, or a previous user's
		}
		kept := min(r.n, maxEvents)
		u.Events = append(u.Events, Event{Time: time.Unix(0, r.at), Mailbox: r.mailbox,
			Events: append([]string(nil), r.events[:kept]...), More: r.n - kept, Result: r.result})
	}
	for _, p := range l.pushes {
		u.Pushes = append(u.Pushes, Push{Time: time.Unix(0, p.at), AccountID: p.accountID, Token: p.token,
			Outcome: p.outcome, Status: p.status, Reason: p.reason})
	}
	slices.SortFunc(u.Pushes, func(a, b Push) int { return b.Time.Compare(a.Time) }) // newest first
	return u
}
