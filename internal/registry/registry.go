// Package registry owns the devices that asked for push: which user's
// mailbox changes wake which (account id, device token) pair.
//
// It keeps everything in memory for fast /notify lookups and makes every
// change durable before Register returns, through an append-only journal
// beside a JSON snapshot (see journal.go and snapshot.go). A registration
// is keyed by (user, account id, device token): two phones restored from
// one backup share an account id but have different tokens, and both must
// get pushes (docs/protocol.md#registry-rules).
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/logging"
	"github.com/xapsd/xapsd/internal/statedir"
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
	registered  int64 // unix nanoseconds
	// refreshed is the latest identical re-registration that was
	// acknowledged without a write (see Options.RefreshAfter). It lives in
	// memory only, for Remove: a device that registered again after
	// Apple's 410 timestamp keeps its registration. A crash forgets it,
	// which costs at most RefreshAfter of that protection.
	refreshed int64
}

// mailboxSet is shared between all registrations with the same list; most
// devices register the same few lists. refs counts those registrations:
// the last one to go takes the set with it, so memory follows the live
// registrations however many different lists were ever registered.
type mailboxSet struct {
	names []string // as registered
	match []string // normalised for /notify matching
	key   string   // its key in Registry.boxes
	refs  int
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
	// MaxRegistrations caps the registrations of all users together
	// (0: no cap): Register refuses one that would add a registration
	// with ErrFull, while re-registrations still work.
	MaxRegistrations int
	// CompactAfter writes a new snapshot after this many journal records,
	// or once the journal has grown by CompactAfterBytes or by the size of
	// the last snapshot, whichever is more: a few huge records must not
	// grow the journal as far as many small ones.
	CompactAfter      int
	CompactAfterBytes int64
	// RefreshAfter: a re-registration identical to a durable one younger
	// than this is acknowledged without a disk write (iOS re-registers on
	// every IMAP connection).
	RefreshAfter time.Duration
	Log          logrus.FieldLogger
	Now          func() time.Time
	// OnSync, when set, sees each group commit: records made durable by
	// one fsync and how long the write and fsync took.
	OnSync func(records int, d time.Duration)
	// CheckEvery is how often the journal writer looks for state files
	// deleted under it, and how often, after a failed write, the store
	// tries whether the disk (or PostgreSQL) takes writes again, so that
	// Health recovers without a registration (default 5 s).
	CheckEvery time.Duration
	// Postgres, when set, keeps the registry in that database instead of
	// Path's files (postgres.go).
	Postgres *PostgresOptions
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
	if o.CompactAfterBytes <= 0 {
		o.CompactAfterBytes = 64 << 20
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
	if o.CheckEvery <= 0 {
		o.CheckEvery = 5 * time.Second
	}
}

// ErrClosed is returned by calls after Close.
var ErrClosed = errors.New("registry closed")

// ErrFull is returned by Register for a new registration while the
// registry holds MaxRegistrations.
var ErrFull = errors.New("registry full")

// Registry is safe for concurrent use.
type Registry struct {
	opts Options
	log  logrus.FieldLogger

	mu     sync.RWMutex
	users  map[string][]entry
	boxes  map[string]*mailboxSet
	boxKey []byte // scratch for internBoxes
	// sizedFor is the number of users the users map was made for before
	// a load (presize), until fitToLive has looked at it.
	sizedFor int
	count    int
	seq      uint64 // last sequence number handed out
	applied  uint64 // last sequence number whose change is in memory (and on disk)
	adding   int    // new registrations queued but not yet applied, for MaxRegistrations
	pending  *batch // records not yet handed to the journal writer
	closed   bool

	// appleCerts is the old daemon's certificate store, when the file
	// loaded at start still had one (docs/protocol.md#legacy-applecerts).
	appleCerts json.RawMessage

	store persister
}

// A persister makes the registry's changes durable: the journal beside
// the snapshot file (journal.go), or a PostgreSQL database several
// daemons share (postgres.go). Either takes the pending batch when kicked,
// makes it durable, applies it to memory and releases its waiters; the
// rest of the registry does not care which it has.
type persister interface {
	kick()
	// health fills in what Health reports about durability.
	health(h *Health)
	// expire removes the registrations registered before cutoff, waits
	// until that is durable and returns how many it removed.
	expire(cutoff time.Time) (removed int)
	// capsInStore: the store enforces the device caps itself (a shared
	// database, where this daemon's memory may not yet hold what another
	// one just added, so its choice of the oldest could be wrong).
	capsInStore() bool
	// exclusive runs work unless another daemon sharing the store runs
	// it (see Registry.Exclusive).
	exclusive(ctx context.Context, name string, work func() error) (ran bool, err error)
	close() error
}

// Open loads the registry from opts.Path (snapshot, legacy database.json or
// nothing) plus its journal, and starts the journal writer; with
// opts.Postgres, from that database instead (postgres.go).
func Open(opts Options) (*Registry, error) {
	opts.setDefaults()
	r := &Registry{
		opts:    opts,
		log:     opts.Log,
		users:   make(map[string][]entry),
		boxes:   make(map[string]*mailboxSet),
		pending: newBatch(),
	}
	if opts.Postgres != nil {
		// Nothing of the registry lives in the state folder.
		p, err := openPostgres(r, *opts.Postgres)
		if err != nil {
			return nil, err
		}
		r.store = p
		return r, nil
	}
	j, err := openJournal(r, statedir.New(opts.Path))
	if err != nil {
		return nil, err
	}
	r.store = j
	j.start()
	// Also for a new file: the old daemon only expired registrations when
	// its file existed at start.
	if n := r.Expire(opts.Now()); n > 0 {
		r.log.WithField("removed", n).Info("removed registrations older than the registration TTL")
	}
	r.fitToLive()
	return r, nil
}

// presize makes the users map for about n users before a load: growing
// it step by step would cost a good part of loading a million.
func (r *Registry) presize(n int) {
	r.users = make(map[string][]entry, n)
	r.sizedFor = n
}

// fitToLive makes the users map again, sized for the users it holds, when
// presize made it for far more: a Go map keeps its room when entries go,
// so a map sized from a snapshot of many expired registrations, or of
// users with several devices each, would hold that memory for good.
func (r *Registry) fitToLive() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sizedFor > 2*len(r.users)+1024 {
		users := make(map[string][]entry, len(r.users))
		for u, regs := range r.users {
			users[u] = regs
		}
		r.users = users
	}
	r.sizedFor = 0
}

// internBoxes returns the shared set for a list, counting one more
// registration that uses it; releaseBoxes undoes that. Caller holds mu
// (or is loading). The lookup key is built in a reused buffer, so a list
// seen before costs no allocation: loading a million registrations
// mostly sees the same few lists.
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
		s.refs++
		return s
	}
	s := &mailboxSet{names: append([]string(nil), names...), match: make([]string, len(names)), key: string(buf), refs: 1}
	for i, n := range names {
		s.match[i] = normalizeMailbox(n)
	}
	r.boxes[s.key] = s
	return s
}

// reset empties the registry, for a load that starts over.
func (r *Registry) reset() {
	r.users = make(map[string][]entry)
	r.boxes = make(map[string]*mailboxSet)
	r.count = 0
}

func (r *Registry) releaseBoxes(s *mailboxSet) {
	if s.refs--; s.refs == 0 {
		delete(r.boxes, s.key)
	}
}

// Register stores reg and returns once it is on disk. The user name is
// folded the way Dovecot folds it (FoldUser), the device token to upper
// case (FoldToken). A Registered time of zero means now.
//
// Memory changes only once the journal write succeeded: an error means
// the registration was not stored, is not looked up, and is not in any
// snapshot. A registration identical to a stored one younger than
// RefreshAfter is acknowledged without a write.
func (r *Registry) Register(ctx context.Context, reg Registration) error {
	return r.register(ctx, reg, false)
}

// register is Register; keepNewer (imports) leaves a newer copy another
// daemon stored in a shared database alone.
func (r *Registry) register(ctx context.Context, reg Registration, keepNewer bool) error {
	reg.User = FoldUser(reg.User)
	reg.DeviceToken = FoldToken(reg.DeviceToken)
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
	now := reg.Registered.UnixNano()
	if idx >= 0 && slices.Equal(regs[idx].boxes.names, reg.Mailboxes) &&
		time.Duration(now-regs[idx].registered) < r.opts.RefreshAfter && now >= regs[idx].registered {
		// Unchanged and already durable: nothing to write, but the time
		// of this registration counts for Remove.
		regs[idx].refreshed = max(regs[idx].refreshed, now)
		r.mu.Unlock()
		return nil
	}
	if idx < 0 && r.opts.MaxRegistrations > 0 && r.count+r.adding >= r.opts.MaxRegistrations {
		r.mu.Unlock()
		return ErrFull
	}
	b := r.pending
	if idx < 0 {
		b.adds++
		r.adding++
	}
	b.addRecord(record{Seq: r.nextSeq(), Op: opPut, User: reg.User, AccountID: reg.AccountID, DeviceToken: reg.DeviceToken,
		Mailboxes: slices.Clone(reg.Mailboxes), RegistrationTime: reg.Registered.UTC(), keepNewer: keepNewer})
	if idx < 0 && !r.store.capsInStore() {
		r.planCaps(reg.User, regs, entry{accountID: reg.AccountID, deviceToken: reg.DeviceToken, registered: now}, b)
	}
	r.mu.Unlock()
	r.store.kick()
	return b.wait(ctx)
}

// planCaps journals the removal of the oldest registrations that adding
// e to regs would put over the limits; the writer applies them with the
// new registration. Caller holds mu. Two new devices of one user in the
// same batch can each see the other's slot free and leave the user one
// over the limit until the next registration, which removes it.
func (r *Registry) planCaps(user string, regs []entry, e entry, b *batch) {
	regs = append(slices.Clone(regs), e)
	for {
		perAccount := 0
		for i := range regs {
			if regs[i].accountID == e.accountID {
				perAccount++
			}
		}
		var victim = -1
		switch {
		case perAccount > r.opts.MaxPerAccount:
			victim = oldest(regs, func(x *entry) bool { return x.accountID == e.accountID })
		case len(regs) > r.opts.MaxPerUser:
			victim = oldest(regs, func(*entry) bool { return true })
		}
		if victim < 0 {
			return
		}
		r.log.WithFields(logrus.Fields{"user": user, "account": logging.Mask(r.log, regs[victim].accountID),
			"token": logging.Mask(r.log, regs[victim].deviceToken)}).Info("device limit reached: dropping the oldest registration")
		b.addRecord(delRec(r.nextSeq(), user, regs[victim].accountID, regs[victim].deviceToken))
		regs = slices.Delete(regs, victim, victim+1)
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
// inboxOnly, only INBOX changes match (the old daemon's rule).
func (r *Registry) Lookup(user, mailbox string, inboxOnly bool) LookupResult {
	user = FoldUser(user)
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

// Remove deletes one registration and waits for the disk. When before
// is not zero the registration is only removed if it was registered
// before that time: an APNs 410 carries the time the token became
// invalid, and a device that registered again since then must keep its
// registration (docs/protocol.md#apns-410-timestamp), also when that
// registration was identical and not written. It reports whether it
// removed one.
func (r *Registry) Remove(k Key, before time.Time) bool {
	k.User = FoldUser(k.User)
	k.DeviceToken = FoldToken(k.DeviceToken)
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return false
	}
	b := r.pending
	removed := false
	for _, e := range r.users[k.User] {
		if e.accountID != k.AccountID || e.deviceToken != k.DeviceToken {
			continue
		}
		if before.IsZero() || max(e.registered, e.refreshed) < before.UnixNano() {
			rec := delRec(r.nextSeq(), k.User, k.AccountID, k.DeviceToken)
			rec.before = before
			b.addRecord(rec)
			removed = true
		}
		break
	}
	r.mu.Unlock()
	if !removed {
		return false
	}
	r.store.kick()
	return b.wait(context.Background()) == nil
}

// RemoveMatching deletes every registration of user whose account id or
// device token equals id ("" = all of the user's) and waits for the disk.
// It returns what it removed. Admin tools use it.
func (r *Registry) RemoveMatching(ctx context.Context, user, id string) ([]Registration, error) {
	user = FoldUser(user)
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, ErrClosed
	}
	var removed []Registration
	b := r.pending
	for _, e := range r.users[user] {
		if id == "" || e.accountID == id || strings.EqualFold(e.deviceToken, id) {
			removed = append(removed, e.registration(user))
			b.addRecord(delRec(r.nextSeq(), user, e.accountID, e.deviceToken))
		}
	}
	r.mu.Unlock()
	if len(removed) == 0 {
		return nil, nil
	}
	r.store.kick()
	if err := b.wait(ctx); err != nil {
		return nil, err
	}
	return removed, nil
}

// removeAt deletes regs[i] of user. Caller holds mu.
func (r *Registry) removeAt(user string, regs []entry, i int) {
	r.releaseBoxes(regs[i].boxes)
	regs = append(regs[:i], regs[i+1:]...)
	r.count--
	if len(regs) == 0 {
		delete(r.users, user)
	} else {
		r.users[user] = regs
	}
}

// Expire removes registrations not refreshed within the TTL, waits for
// the disk and returns how many it removed.
func (r *Registry) Expire(now time.Time) int {
	return r.store.expire(now.Add(-r.opts.TTL))
}

// expireInMemory removes, through the pending batch, the registrations in
// memory registered before cutoff: the way a store that is this daemon's
// alone expires them.
func (r *Registry) expireInMemory(cutoffTime time.Time) int {
	cutoff := cutoffTime.UnixNano()
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return 0
	}
	b := r.pending
	n := 0
	for user, regs := range r.users {
		for _, e := range regs {
			if e.registered < cutoff {
				b.addRecord(delRec(r.nextSeq(), user, e.accountID, e.deviceToken))
				n++
			}
		}
	}
	r.mu.Unlock()
	if n == 0 {
		return 0
	}
	r.store.kick()
	if err := b.wait(context.Background()); err != nil {
		return 0
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
	user = FoldUser(user)
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

// Users returns up to limit users with registrations for whom match is
// true, sorted, without copying their registrations: for admin tools that
// look for a user name like another (xapsd diagnose).
func (r *Registry) Users(match func(user string) bool, limit int) []string {
	var out []string
	r.mu.RLock()
	for u := range r.users {
		if match(u) {
			out = append(out, u)
		}
	}
	r.mu.RUnlock()
	sort.Strings(out)
	if len(out) > limit {
		out = out[:limit]
	}
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
		out = append(out, Registration{Key: Key{User: FoldUser(rec.User), AccountID: rec.AccountID,
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
		g.User = FoldUser(g.User)
		g.DeviceToken = FoldToken(g.DeviceToken)
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
		if err := r.register(ctx, g, true); err != nil {
			return added, err
		}
		added++
	}
	return added, nil
}

// Health is what readiness checks and metrics need to know about the
// registry.
type Health struct {
	// WriteErr is the error of the last journal write, or of the last
	// check whether the disk takes writes; nil once one succeeds.
	WriteErr error
	// FollowErr, with PostgreSQL, says why this daemon does not hear the
	// changes other daemons commit (not connected, LISTEN lost); nil while
	// it does, and always with the files.
	FollowErr error
	// Damage says what loading found damaged or lost (lines skipped, a
	// snapshot missing), one short line each; Damaged counts the
	// records and lines skipped. The registry started anyway.
	Damage  []string
	Damaged int
}

// Health reports the registry's state for /readyz and the metrics.
func (r *Registry) Health() Health {
	var h Health
	r.store.health(&h)
	return h
}

// Exclusive runs work that must happen on one daemon at a time when
// several share a database (Apple ID certificate renewal): ran is false,
// and work was not run, while another daemon runs it. With the files the
// registry is this daemon's alone, and work simply runs.
func (r *Registry) Exclusive(ctx context.Context, name string, work func() error) (ran bool, err error) {
	return r.store.exclusive(ctx, name, work)
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
	if err := r.store.close(); err != nil {
		return fmt.Errorf("close registry %s: %w", r.opts.Path, err)
	}
	return nil
}
