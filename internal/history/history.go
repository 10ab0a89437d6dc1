// Package history remembers, in memory, what xapsd saw lately for each
// user: the last few /notify events (when, which mailbox, which events,
// what xapsd did with them) and the last push to each of the user's
// devices (when, the outcome, Apple's status and reason). `xapsd
// diagnose` reads it to show where the chain from a delivery to the phone
// breaks, including events that arrive under a user name other than the
// one the phone registered with.
//
// It is bounded whatever the traffic: PerUser events and Devices pushes
// per user, and at most MaxUsers users. Users are placed by a hash of
// their name into sets of two; a new user takes the place of the one of
// its set that was active longest ago, so the users kept are, roughly,
// the most recently active ones. One user's record is one object of fixed
// size, reused for the next user that takes its place: recording costs a
// mutex, a hash and a few memory accesses, and allocates nothing once
// warm, which the /notify path can afford (make bench measures it). A
// restart forgets everything; this is a diagnostic aid, not a log.
package history

import (
	"hash/maphash"
	"math/bits"
	"slices"
	"strings"
	"sync"
	"time"
)

// What one user's record holds, and the default bound on users.
const (
	PerUser         = 4 // the last /notify events
	Devices         = 8 // devices with their last push
	DefaultMaxUsers = 8192
	// ways is how many users share a set: the choice of whom to forget.
	ways = 2
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
	// MaxUsers bounds the users kept; it is rounded down to a power of
	// two (at least 2).
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
	name    string
	since   int64           // when it became name's: older records are a previous user's
	events  [PerUser]record // a ring; next is the oldest slot
	next    int
	pushes  [Devices]pushRecord // one per device, the first nPushes used
	nPushes int
}

// slot is one place of a set: the user's hash and last activity beside
// the pointer, so that looking for a user or choosing whom to forget
// reads only the set.
type slot struct {
	hash uint64
	used int64
	log  *userLog
}

// History is safe for concurrent use.
type History struct {
	now  func() time.Time
	hash func(string) uint64 // a seeded maphash; tests set their own

	mu   sync.Mutex
	sets [][ways]slot
}

// New returns an empty History.
func New(o Options) *History {
	if o.MaxUsers < ways {
		o.MaxUsers = DefaultMaxUsers
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	sets := 1 << (bits.Len(uint(o.MaxUsers/ways)) - 1) // a power of two, for the mask
	seed := maphash.MakeSeed()
	return &History{now: o.Now, hash: func(s string) uint64 { return maphash.String(seed, s) }, sets: make([][ways]slot, sets)}
}

// logLocked returns user's log, taking the place of the least recently
// active user of its set if user has none; now is the time of what is
// about to be recorded.
func (h *History) logLocked(user string, now int64) *userLog {
	hash := h.hash(user)
	set := &h.sets[hash&uint64(len(h.sets)-1)]
	victim := 0
	for i := range set {
		s := &set[i]
		if s.log != nil && s.hash == hash && s.log.name == user {
			s.used = now
			return s.log
		}
		if set[victim].log != nil && (s.log == nil || s.used < set[victim].used) {
			victim = i
		}
	}
	s := &set[victim]
	if s.log == nil {
		s.log = &userLog{}
	}
	s.hash, s.used = hash, now
	s.log.reset(user, now)
	return s.log
}

// findLocked returns user's log, or nil.
func (h *History) findLocked(user string) *userLog {
	hash := h.hash(user)
	for _, s := range h.sets[hash&uint64(len(h.sets)-1)] {
		if s.log != nil && s.hash == hash && s.log.name == user {
			return s.log
		}
	}
	return nil
}

// reset makes l user's, empty, without touching its records: those from
// before since are another user's and are overwritten as new ones come.
func (l *userLog) reset(user string, now int64) {
	l.name, l.since, l.next, l.nPushes = user, now, 0, 0
}

// Notified records a /notify for user: the mailbox, the event names and
// what xapsd did with it (result).
func (h *History) Notified(user, mailbox string, events []string, result string) {
	if len(mailbox) > maxMailbox {
		mailbox = strings.Clone(mailbox[:maxMailbox])
	}
	now := h.now().UnixNano()
	h.mu.Lock()
	l := h.logLocked(user, now)
	r := &l.events[l.next]
	l.next = (l.next + 1) % PerUser
	r.at, r.mailbox, r.result, r.n = now, mailbox, result, len(events)
	r.events = [maxEvents]string{}
	copy(r.events[:], events)
	h.mu.Unlock()
}

// Pushed records an attempt to push to one of user's devices.
func (h *History) Pushed(user, accountID, token, outcome string, status int, reason string) {
	now := h.now().UnixNano()
	h.mu.Lock()
	l := h.logLocked(user, now)
	slot := -1
	for i := range l.nPushes {
		if l.pushes[i].token == token && l.pushes[i].accountID == accountID {
			slot = i
			break
		}
	}
	switch {
	case slot >= 0:
	case l.nPushes < Devices:
		slot = l.nPushes
		l.nPushes++
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
	if l := h.findLocked(user); l != nil {
		return l.export(), true
	}
	return User{}, false
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
	for _, set := range h.sets {
		for _, s := range set {
			if s.log != nil && s.log.name != user && strings.EqualFold(LocalPart(s.log.name), local) {
				out = append(out, s.log.export())
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
	for i := range PerUser {
		r := l.events[(l.next-1-i+PerUser)%PerUser]
		if r.at == 0 || r.at < l.since {
			break // empty, or a previous user's
		}
		kept := min(r.n, maxEvents)
		u.Events = append(u.Events, Event{Time: time.Unix(0, r.at), Mailbox: r.mailbox,
			Events: append([]string(nil), r.events[:kept]...), More: r.n - kept, Result: r.result})
	}
	for _, p := range l.pushes[:l.nPushes] {
		u.Pushes = append(u.Pushes, Push{Time: time.Unix(0, p.at), AccountID: p.accountID, Token: p.token,
			Outcome: p.outcome, Status: p.status, Reason: p.reason})
	}
	slices.SortFunc(u.Pushes, func(a, b Push) int { return b.Time.Compare(a.Time) }) // newest first
	return u
}
