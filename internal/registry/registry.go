// Package registry owns the devices that asked for push: which user's
// mailbox changes wake which (account id, device token) pair.
//
// It keeps everything in memory for fast /notify lookups and makes every
// change durable before Register returns, through an append-only journal
// beside a JSON snapshot (see journal.go and snapshot.go). A registration
// is keyed by (user, account id, device token): two phones restored from
// one backup share an account id but have different tokens, and both must
// get pushes (spec §4.6).
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/logging"
)

// Key names one registration.
type Key struct {
	User        string
	AccountID   string
	DeviceToken string
}

// Registration is one device's request for push, as iOS sent it.
type Registration struct {
	Key
	Mailboxes  []string // IMAP names as iOS sent them
	Registered time.Time
}

// entry is the in-memory form: small, because a large server holds a
// million of them.
type entry struct {
	accountID   string
	deviceToken string
	boxes       *mailboxSet
	registered  int64  // unix nanoseconds
	seq         uint64 // journal sequence number of the record that wrote it
	// refreshed is the latest identical re-registration that was
	// acknowledged without a write (see Options.RefreshAfter). It lives in
	// memory only, for Remove: a device that registered again after
	// Apple's 410 timestamp keeps its registration. A crash forgets it,
	// which costs at most RefreshAfter of that protection.
	refreshed int64
}

// mailboxSet is shared between all registrations with the same list; most
// devices register the same few lists.
type mailboxSet struct {
	names []string // as registered
	match []string // normalised for /notify matching
}

func (s *mailboxSet) contains(mailbox string) bool {
	for _, m := range s.match {
		if m == mailbox {
			return true
		}
	}
	return false
}

// Options configures Open.
type Options struct {
	// Path is the snapshot file (the config's databaseFile). The journal
	// segments live beside it as Path.journal.<sequence>.
	Path string
	// TTL removes registrations not refreshed for this long.
	TTL time.Duration
	// MaxPerAccount caps the devices (tokens) of one account id; the
	// oldest registration is dropped. MaxPerUser caps one user's
	// registrations the same way, whatever their account ids.
	MaxPerAccount int
	MaxPerUser    int
	// CompactAfter writes a new snapshot after this many journal records.
	CompactAfter int
	// RefreshAfter: a re-registration identical to a durable one younger
	// than this is acknowledged without a disk write (iOS re-registers on
	// every IMAP connection).
	RefreshAfter time.Duration
	Log          logrus.FieldLogger
	Now          func() time.Time
	// OnSync, when set, sees each group commit: records made durable by
	// one fsync and how long the write and fsync took.
	OnSync func(records int, d time.Duration)
}

func (o *Options) setDefaults() {
	if o.TTL <= 0 {
		o.TTL = 720 * time.Hour
	}
	if o.MaxPerAccount <= 0 {
		o.MaxPerAccount = 8
	}
	if o.MaxPerUser <= 0 {
		o.MaxPerUser = 100
	}
	if o.CompactAfter <= 0 {
		o.CompactAfter = 100000
	}
	if o.RefreshAfter <= 0 {
		o.RefreshAfter = time.Hour
	}
	if o.Log == nil {
		l := logrus.New()
		l.SetLevel(logrus.PanicLevel)
		o.Log = l
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// ErrClosed is returned by calls after Close.
var ErrClosed = errors.New("registry closed")

// Registry is safe for concurrent use.
type Registry struct {
	opts Options
	log  logrus.FieldLogger

	mu      sync.RWMutex
	users   map[string][]entry
	boxes   map[string]*mailboxSet
	boxKey  []byte // scratch for internBoxes
	count   int
	seq     uint64 // last sequence number handed out
	pending *batch // records not yet handed to the journal writer
	closed  bool

	// appleCerts is the old daemon's certificate store, when the file
	// loaded at start still had one (spec §4.1).
	appleCerts json.RawMessage

	j *journal
}

// Open loads the registry from opts.Path (snapshot, legacy database.json or
// nothing) plus its journal, and starts the journal writer.
func Open(opts Options) (*Registry, error) {
	opts.setDefaults()
	r := &Registry{
		opts:    opts,
		log:     opts.Log,
		users:   make(map[string][]entry),
		boxes:   make(map[string]*mailboxSet),
		pending: newBatch(),
	}
	j, err := openJournal(r, opts.Path)
	if err != nil {
		return nil, err
	}
	r.j = j
	j.start()
	// Also for a new file: the old daemon only expired registrations when
	// its file existed at start (spec §4.5).
	if n := r.Expire(opts.Now()); n > 0 {
		r.log.WithField("removed", n).Info("removed registrations older than the registration TTL")
	}
	return r, nil
}

// internBoxes returns the shared set for a list. Caller holds mu (or is
// loading). The lookup key is built in a reused buffer, so a list seen
// before costs no allocation: loading a million registrations mostly
// sees the same few lists.
func (r *Registry) internBoxes(names []string) *mailboxSet {
	buf := r.boxKey[:0]
	for i, n := range names {
		if i > 0 {
			buf = append(buf, 0)
		}
		buf = append(buf, n...)
	}
	r.boxKey = buf
	if s, ok := r.boxes[string(buf)]; ok {
		return s
	}
	s := &mailboxSet{names: append([]string(nil), names...), match: make([]string, len(names))}
	for i, n := range names {
		s.match[i] = normalizeMailbox(n)
	}
	r.boxes[string(buf)] = s
	return s
}

// Register stores reg and returns once it is on disk. The user name is
// lower-cased (spec §1.2). A Registered time of zero means now.
func (r *Registry) Register(ctx context.Context, reg Registration) error {
	reg.User = strings.ToLower(reg.User)
	if reg.Registered.IsZero() {
		reg.Registered = r.opts.Now()
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return ErrClosed
	}
	regs := r.users[reg.User]
	idx := -1
	for i := range regs {
		if regs[i].accountID == reg.AccountID && regs[i].deviceToken == reg.DeviceToken {
			idx = i
			break
		}
	}
	boxes := r.internBoxes(reg.Mailboxes)
	now := reg.Registered.UnixNano()
	if idx >= 0 && regs[idx].boxes == boxes && regs[idx].seq <= r.j.durableSeq() &&
		time.Duration(now-regs[idx].registered) < r.opts.RefreshAfter && now >= regs[idx].registered {
		// Unchanged and already durable: nothing to write, but the time
		// of this registration counts for Remove.
		regs[idx].refreshed = max(regs[idx].refreshed, now)
		r.mu.Unlock()
		return nil
	}
	b := r.pending
	seq := r.nextSeq()
	e := entry{accountID: reg.AccountID, deviceToken: reg.DeviceToken, boxes: boxes, registered: now, seq: seq}
	b.add(putRecord(seq, reg.User, e))
	if idx >= 0 {
		regs[idx] = e
	} else {
		regs = append(regs, e)
		r.count++
		regs = r.enforceCaps(reg.User, regs, reg.AccountID, b)
	}
	r.users[reg.User] = regs
	r.mu.Unlock()
	r.j.kick()
	return b.wait(ctx)
}

// enforceCaps drops the oldest registrations over the limits, journaling
// each removal. Caller holds mu.
func (r *Registry) enforceCaps(user string, regs []entry, accountID string, b *batch) []entry {
	for {
		perAccount := 0
		for i := range regs {
			if regs[i].accountID == accountID {
				perAccount++
			}
		}
		var victim = -1
		switch {
		case perAccount > r.opts.MaxPerAccount:
			victim = oldest(regs, func(e *entry) bool { return e.accountID == accountID })
		case len(regs) > r.opts.MaxPerUser:
			victim = oldest(regs, func(*entry) bool { return true })
		}
		if victim < 0 {
			return regs
		}
		r.log.WithFields(logrus.Fields{"user": user, "account": logging.Mask(r.log, regs[victim].accountID),
			"token": logging.Mask(r.log, regs[victim].deviceToken)}).Info("device limit reached: dropping the oldest registration")
		b.add(delRecord(r.nextSeq(), user, regs[victim].accountID, regs[victim].deviceToken))
		regs = append(regs[:victim], regs[victim+1:]...)
		r.count--
	}
}

func oldest(regs []entry, match func(*entry) bool) int {
	best := -1
	for i := range regs {
		if match(&regs[i]) && (best < 0 || regs[i].registered < regs[best].registered) {
			best = i
		}
	}
	return best
}

func (r *Registry) nextSeq() uint64 {
	r.seq++
	return r.seq
}

// LookupResult says whom a mailbox change concerns.
type LookupResult struct {
	Targets   []Key
	KnownUser bool // the user has at least one registration
}

// Lookup finds the registrations of user that asked for mailbox. With
// inboxOnly, only INBOX changes match (the old daemon's rule, spec §3.3).
func (r *Registry) Lookup(user, mailbox string, inboxOnly bool) LookupResult {
	user = strings.ToLower(user)
	mailbox = normalizeNotifyMailbox(mailbox)
	r.mu.RLock()
	defer r.mu.RUnlock()
	regs, ok := r.users[user]
	res := LookupResult{KnownUser: ok}
	if inboxOnly && mailbox != "INBOX" {
		return res
	}
	for i := range regs {
		if regs[i].boxes.contains(mailbox) {
			res.Targets = append(res.Targets, Key{User: user, AccountID: regs[i].accountID, DeviceToken: regs[i].deviceToken})
		}
	}
	return res
}

// Remove deletes one registration. When before is not zero the
// registration is only removed if it was registered before that time: an
// APNs 410 carries the time the token became invalid, and a device that
// registered again since then must keep its registration (spec §4.6),
// also when that registration was identical and not written to disk.
// It does not wait for the disk: a lost removal only costs another 410.
func (r *Registry) Remove(k Key, before time.Time) bool {
	k.User = strings.ToLower(k.User)
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return false
	}
	regs := r.users[k.User]
	removed := false
	for i := range regs {
		e := &regs[i]
		if e.accountID != k.AccountID || e.deviceToken != k.DeviceToken {
			continue
		}
		if !before.IsZero() && max(e.registered, e.refreshed) >= before.UnixNano() {
			break
		}
		r.pending.add(delRecord(r.nextSeq(), k.User, k.AccountID, k.DeviceToken))
		r.removeAt(k.User, regs, i)
		removed = true
		break
	}
	r.mu.Unlock()
	if removed {
		r.j.kick()
	}
	return removed
}

// RemoveMatching deletes every registration of user whose account id or
// device token equals id ("" = all of the user's) and waits for the disk.
// It returns what it removed. Admin tools use it.
func (r *Registry) RemoveMatching(ctx context.Context, user, id string) ([]Registration, error) {
	user = strings.ToLower(user)
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, ErrClosed
	}
	var removed []Registration
	b := r.pending
	regs := r.users[user]
	for i := 0; i < len(regs); {
		e := regs[i]
		if id == "" || e.accountID == id || strings.EqualFold(e.deviceToken, id) {
			removed = append(removed, e.registration(user))
			b.add(delRecord(r.nextSeq(), user, e.accountID, e.deviceToken))
			regs = r.removeAt(user, regs, i)
			continue
		}
		i++
	}
	r.mu.Unlock()
	if len(removed) == 0 {
		return nil, nil
	}
	r.j.kick()
	return removed, b.wait(ctx)
}

// removeAt deletes regs[i] of user and returns the shortened slice. Caller
// holds mu.
func (r *Registry) removeAt(user string, regs []entry, i int) []entry {
	regs = append(regs[:i], regs[i+1:]...)
	r.count--
	if len(regs) == 0 {
		delete(r.users, user)
	} else {
		r.users[user] = regs
	}
	return regs
}

// Expire removes registrations not refreshed within the TTL.
func (r *Registry) Expire(now time.Time) int {
	n := r.expire(now)
	if n > 0 {
		r.j.kick()
	}
	return n
}

func (r *Registry) expire(now time.Time) int {
	cutoff := now.Add(-r.opts.TTL).UnixNano()
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for user, regs := range r.users {
		for i := 0; i < len(regs); {
			if regs[i].registered < cutoff {
				r.pending.add(delRecord(r.nextSeq(), user, regs[i].accountID, regs[i].deviceToken))
				regs = r.removeAt(user, regs, i)
				n++
				continue
			}
			i++
		}
	}
	return n
}

func (e *entry) registration(user string) Registration {
	return Registration{
		Key:        Key{User: user, AccountID: e.accountID, DeviceToken: e.deviceToken},
		Mailboxes:  append([]string(nil), e.boxes.names...),
		Registered: time.Unix(0, e.registered),
	}
}

// List returns the registrations of user, or of everyone when user is "",
// sorted by user and registration time.
func (r *Registry) List(user string) []Registration {
	user = strings.ToLower(user)
	r.mu.RLock()
	var out []Registration
	for u, regs := range r.users {
		if user != "" && u != user {
			continue
		}
		for i := range regs {
			out = append(out, regs[i].registration(u))
		}
	}
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].User != out[j].User {
			return out[i].User < out[j].User
		}
		if !out[i].Registered.Equal(out[j].Registered) {
			return out[i].Registered.Before(out[j].Registered)
		}
		if out[i].AccountID != out[j].AccountID {
			return out[i].AccountID < out[j].AccountID
		}
		return out[i].DeviceToken < out[j].DeviceToken
	})
	return out
}

// ParseFile reads the registrations of a database file written by this
// or the old xapsd, for importing them elsewhere.
func ParseFile(data []byte) ([]Registration, error) {
	snap, err := decodeSnapshot(data)
	if err != nil {
		return nil, err
	}
	out := make([]Registration, 0, len(snap.Records))
	for _, rec := range snap.Records {
		if rec.User == "" || rec.AccountID == "" || rec.DeviceToken == "" || len(rec.Mailboxes) == 0 {
			continue
		}
		out = append(out, Registration{Key: Key{User: strings.ToLower(rec.User), AccountID: rec.AccountID,
			DeviceToken: rec.DeviceToken}, Mailboxes: rec.Mailboxes, Registered: rec.RegistrationTime})
	}
	return out, nil
}

// Import adds registrations from another registry, keeping whichever of
// two copies of a registration is newer, and waits for the disk. Entries
// without a time count as registered now.
func (r *Registry) Import(ctx context.Context, regs []Registration) (added int, err error) {
	now := r.opts.Now()
	for _, g := range regs {
		g.User = strings.ToLower(g.User)
		if g.Registered.IsZero() || g.Registered.After(now) {
			g.Registered = now
		}
		if now.Sub(g.Registered) > r.opts.TTL {
			continue
		}
		r.mu.RLock()
		newer := false
		for _, e := range r.users[g.User] {
			if e.accountID == g.AccountID && e.deviceToken == g.DeviceToken && e.registered >= g.Registered.UnixNano() {
				newer = true
			}
		}
		r.mu.RUnlock()
		if newer {
			continue
		}
		if err := r.Register(ctx, g); err != nil {
			return added, err
		}
		added++
	}
	return added, nil
}

// Writable reports the error of the last journal write, or nil when it
// succeeded: readiness checks use it.
func (r *Registry) Writable() error {
	if p := r.j.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

// LegacyAppleCerts returns the "AppleCerts" object of an old xapsd
// database.json loaded at start, or nil. The migration keeps it only in
// the backup, so the caller imports it at this start.
func (r *Registry) LegacyAppleCerts() json.RawMessage { return r.appleCerts }

// Stats counts users and registrations.
func (r *Registry) Stats() (users, registrations int) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.users), r.count
}

// Close stops accepting changes, writes what is pending, writes a fresh
// snapshot and closes the journal.
func (r *Registry) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	if err := r.j.close(); err != nil {
		return fmt.Errorf("close registry %s: %w", r.opts.Path, err)
	}
	return nil
}
