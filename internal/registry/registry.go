// Package registry owns the devices that asked for push: which user's
// mailbox changes wake which (account id, device token) pair.
//
// It is the index: every registration in memory, for fast /notify
// lookups, with the rules about them (the caps per account and per user,
// the registration TTL, Apple's 410 rule, one spelling of user names and
// tokens). Every change is made durable by a Store before the call that
// made it returns: the files in the state folder (internal/filestore) or
// a PostgreSQL database several daemons share (internal/pgstore). A
// registration is keyed by (user, account id, device token): two phones
// restored from one backup share an account id but have different
// tokens, and both must get pushes (docs/protocol.md#registry-rules).
package registry

import (
	"context"
	"fmt"
	"slices"
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

// Options configures Open. The daemon passes the configuration's values
// under the same names (internal/config holds every default); a zero
// value turns its rule off.
type Options struct {
	// RegistrationTTL removes registrations not refreshed for this long
	// (Expire, and at Open for a store of this daemon's alone); 0: never.
	RegistrationTTL time.Duration
	// MaxDevicesPerAccount caps the devices (tokens) of one account id;
	// the oldest registration is dropped. MaxDevicesPerUser caps one
	// user's registrations the same way, whatever their account ids. A
	// shared store applies both itself. 0: no cap.
	MaxDevicesPerAccount int
	MaxDevicesPerUser    int
	// MaxRegistrations caps the registrations of all users together
	// (0: no cap): Register refuses one that would add a registration
	// with ErrFull, while re-registrations still work.
	MaxRegistrations int
	// RegistrationRefresh: a re-registration identical to a stored one
	// younger than this is acknowledged without asking the store (iOS
	// re-registers on every IMAP connection). 0: every one is stored.
	RegistrationRefresh time.Duration
	// Log gets what the registry has to say; nil: nothing is logged.
	Log logrus.FieldLogger
	// Now is the clock; nil: time.Now.
	Now func() time.Time
	// OnSync, when set, sees each group commit: the changes the store made
	// durable together and how long its Commit took.
	OnSync func(changes int, d time.Duration)
}

func (o *Options) setDefaults() {
	if o.Log == nil {
		o.Log = logging.Discard()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Registry is safe for concurrent use.
type Registry struct {
	opts  Options
	log   logrus.FieldLogger
	store Store

	mu      sync.RWMutex
	idx     *index
	adding  int    // new registrations queued but not yet applied, for MaxRegistrations
	pending *batch // changes not yet handed to the store
	closed  bool

	// commitMu is held while a batch is committed and applied, and
	// while a store reloads or copies memory (Memory): what a store
	// reads or copies is never older than what a commit applied.
	commitMu sync.Mutex

	kickc  chan struct{}
	stopc  chan struct{}
	donec  chan struct{}
	follow sync.WaitGroup
}

// Open loads the registrations st holds into memory and starts handing
// it the changes. st is the registry's from then on: Close closes it.
func Open(st Store, opts Options) (*Registry, error) {
	opts.setDefaults()
	r := &Registry{
		opts:    opts,
		log:     opts.Log,
		store:   st,
		idx:     newIndex(),
		pending: newBatch(),
		kickc:   make(chan struct{}, 1),
		stopc:   make(chan struct{}),
		donec:   make(chan struct{}),
	}
	m := &Memory{r: r}
	if err := st.Load(context.Background(), m); err != nil {
		return nil, err
	}
	go r.run()
	r.follow.Add(1)
	go func() {
		defer r.follow.Done()
		st.Follow(m)
	}()
	if !st.Shared() {
		// Also for a new file: the old daemon only expired registrations
		// when its file existed at start. A shared store is swept by one
		// of its daemons, hourly.
		n, err := r.Expire(context.Background(), opts.Now())
		if err != nil {
			r.log.WithError(err).Warn("could not remove the registrations older than the registration TTL; the next sweep tries again")
		} else if n > 0 {
			r.log.WithField("removed", n).Info("removed registrations older than the registration TTL")
		}
	}
	r.mu.Lock()
	r.idx.fitToLive()
	r.mu.Unlock()
	return r, nil
}

// Register stores reg and returns once the store has it (on disk, or
// committed in the database). The user name is folded the way Dovecot
// folds it (FoldUser), the device token to upper case (FoldToken). A
// Registered time of zero means now.
//
// Memory changes only once the store has the registration: an error
// means it was not stored (for an error that wraps ErrUnconfirmed: not
// known to be), is not looked up, and is in no later copy of the store.
// A registration identical to a stored one younger than RegistrationRefresh is
// acknowledged without asking the store.
func (r *Registry) Register(ctx context.Context, reg Registration) error {
	return r.register(ctx, reg, false)
}

// register is Register; keepNewer (imports) leaves a newer copy another
// daemon stored in a shared store alone.
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
	regs := r.idx.users[reg.User]
	idx := find(regs, reg.AccountID, reg.DeviceToken)
	now := reg.Registered.UnixNano()
	if idx >= 0 && slices.Equal(regs[idx].boxes.names, reg.Mailboxes) &&
		time.Duration(now-regs[idx].registered) < r.opts.RegistrationRefresh && now >= regs[idx].registered {
		// Unchanged and already durable: nothing to store, but the time
		// of this registration counts for Remove.
		regs[idx].refreshed = max(regs[idx].refreshed, now)
		r.mu.Unlock()
		return nil
	}
	if idx < 0 && r.opts.MaxRegistrations > 0 && r.idx.count+r.adding >= r.opts.MaxRegistrations {
		r.mu.Unlock()
		return ErrFull
	}
	b := r.pending
	if idx < 0 {
		b.adds++
		r.adding++
	}
	reg.Mailboxes = slices.Clone(reg.Mailboxes)
	reg.Registered = reg.Registered.UTC()
	b.add(Change{Registration: reg, KeepNewer: keepNewer})
	if idx < 0 && !r.store.Shared() {
		r.planCaps(reg.User, regs, entry{accountID: reg.AccountID, deviceToken: reg.DeviceToken, registered: now}, b)
	}
	r.mu.Unlock()
	r.kick()
	return b.wait(ctx)
}

// planCaps adds to b the removal of the oldest registrations that adding
// e to regs would put over the limits; they are stored and applied with
// the new registration. Caller holds mu. Two new devices of one user in
// the same batch can each see the other's slot free and leave the user
// one over the limit until the next registration, which removes it.
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
		case r.opts.MaxDevicesPerAccount > 0 && perAccount > r.opts.MaxDevicesPerAccount:
			victim = oldest(regs, func(x *entry) bool { return x.accountID == e.accountID })
		case r.opts.MaxDevicesPerUser > 0 && len(regs) > r.opts.MaxDevicesPerUser:
			victim = oldest(regs, func(*entry) bool { return true })
		}
		if victim < 0 {
			return
		}
		r.log.WithFields(logrus.Fields{"user": user, "account": logging.Mask(r.log, regs[victim].accountID),
			"token": logging.Mask(r.log, regs[victim].deviceToken)}).Info("device limit reached: dropping the oldest registration")
		b.add(removal(user, regs[victim].accountID, regs[victim].deviceToken))
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

// removal is the change that removes one registration.
func removal(user, accountID, token string) Change {
	return Change{Registration: Registration{Key: Key{User: user, AccountID: accountID, DeviceToken: token}}, Del: true}
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
	regs, ok := r.idx.users[user]
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

// Remove deletes one registration and waits for the store. When before
// is not zero the registration is only removed if it was registered
// before that time: an APNs 410 carries the time the token became
// invalid, and a device that registered again since then must keep its
// registration (docs/protocol.md#apns-410-timestamp), also when that
// registration was identical and not stored again. kept says that it
// stayed for that reason; an error, that the store could not remove it
// (it stays too, and a later Remove may succeed). Neither: it is gone,
// or was not there.
func (r *Registry) Remove(ctx context.Context, k Key, before time.Time) (kept bool, err error) {
	k.User = FoldUser(k.User)
	k.DeviceToken = FoldToken(k.DeviceToken)
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return false, ErrClosed
	}
	regs := r.idx.users[k.User]
	i := find(regs, k.AccountID, k.DeviceToken)
	if i < 0 {
		r.mu.Unlock()
		return false, nil
	}
	if !before.IsZero() && max(regs[i].registered, regs[i].refreshed) >= before.UnixNano() {
		r.mu.Unlock()
		return true, nil
	}
	b := r.pending
	c := removal(k.User, k.AccountID, k.DeviceToken)
	c.Before = before
	b.add(c)
	r.mu.Unlock()
	r.kick()
	return false, b.wait(ctx)
}

// RemoveMatching deletes every registration of user whose account id or
// device token equals id ("" = all of the user's) and waits for the
// store. It returns what it removed. Admin tools use it.
func (r *Registry) RemoveMatching(ctx context.Context, user, id string) ([]Registration, error) {
	user = FoldUser(user)
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, ErrClosed
	}
	var removed []Registration
	b := r.pending
	for _, e := range r.idx.users[user] {
		if id == "" || e.accountID == id || strings.EqualFold(e.deviceToken, id) {
			removed = append(removed, e.registration(user))
			b.add(removal(user, e.accountID, e.deviceToken))
		}
	}
	r.mu.Unlock()
	if len(removed) == 0 {
		return nil, nil
	}
	r.kick()
	if err := b.wait(ctx); err != nil {
		return nil, err
	}
	return removed, nil
}

// Expire removes the registrations not refreshed within RegistrationTTL
// before now, waits for the store and returns how many it removed; an
// error says that the store could not remove them (they stay, and the
// next Expire tries again). The removals of a store that is this
// daemon's alone are found in memory and stored like any other change; a
// shared store sweeps itself (Store.Expire), and removes nothing while
// another daemon sweeps.
func (r *Registry) Expire(ctx context.Context, now time.Time) (int, error) {
	if r.opts.RegistrationTTL <= 0 {
		return 0, nil
	}
	cutoff := now.Add(-r.opts.RegistrationTTL)
	r.commitMu.Lock()
	defer r.commitMu.Unlock()
	r.mu.RLock()
	if r.closed {
		r.mu.RUnlock()
		return 0, ErrClosed
	}
	shared := r.store.Shared()
	var old []Change
	if !shared {
		before := cutoff.UnixNano()
		for user, regs := range r.idx.users {
			for _, e := range regs {
				if e.registered < before {
					old = append(old, removal(user, e.accountID, e.deviceToken))
				}
			}
		}
	}
	r.mu.RUnlock()
	if !shared && len(old) == 0 {
		return 0, nil
	}
	c, n, err := r.store.Expire(ctx, cutoff, old)
	if err != nil {
		return 0, err
	}
	r.mu.Lock()
	r.applyLocked(old, c)
	r.mu.Unlock()
	return n, nil
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
	for u, regs := range r.idx.users {
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
	for u := range r.idx.users {
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

// Import adds registrations from another registry, keeping whichever of
// two copies of a registration is newer, and waits for the store.
// Entries without a time count as registered now.
func (r *Registry) Import(ctx context.Context, regs []Registration) (added int, err error) {
	now := r.opts.Now()
	for _, g := range regs {
		g.User = FoldUser(g.User)
		g.DeviceToken = FoldToken(g.DeviceToken)
		if g.Registered.IsZero() || g.Registered.After(now) {
			g.Registered = now
		}
		if r.opts.RegistrationTTL > 0 && now.Sub(g.Registered) > r.opts.RegistrationTTL {
			continue
		}
		r.mu.RLock()
		newer := false
		for _, e := range r.idx.users[g.User] {
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

// Health reports the store's state for /readyz and the metrics.
func (r *Registry) Health() Health { return r.store.Health() }

// Exclusive runs work that must happen on one daemon at a time when
// several share a store (Apple ID certificate renewal): ran is false,
// and work was not run, while another daemon runs it. With a store that
// is this daemon's alone, work simply runs.
func (r *Registry) Exclusive(ctx context.Context, name string, work func() error) (ran bool, err error) {
	return r.store.Exclusive(ctx, name, work)
}

// Stats counts users and registrations.
func (r *Registry) Stats() (users, registrations int) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.idx.users), r.idx.count
}

// Close stops accepting changes, stores what is pending and closes the
// store.
func (r *Registry) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	close(r.stopc)
	<-r.donec
	err := r.store.Close()
	r.follow.Wait()
	if err != nil {
		return fmt.Errorf("close registry: %w", err)
	}
	return nil
}
