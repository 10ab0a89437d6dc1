package registry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xapsd/xapsd/internal/pgstore"
)

// PostgresOptions select a PostgreSQL database as the registry's store,
// shared by every xapsd that points at it (docs/operations.md#running-several-xapsd).
type PostgresOptions struct {
	// URL is a postgres:// URL or a libpq keyword string; missing parts
	// come from the PG* environment variables. PasswordFile, when set,
	// holds the password.
	URL          string
	PasswordFile string
	// Instance names this daemon in the change notifications, so that it
	// does not reload its own changes (default: host name and process id).
	Instance string
	// WaitLoad is how long Open waits for the database before the daemon
	// starts without registrations, to load them once it can (default
	// 10 s).
	WaitLoad time.Duration
	// CommitTimeout bounds one commit, retries included (default 3 s): a
	// /register waits no longer for a database that does not answer.
	CommitTimeout time.Duration
}

// ErrUnavailable wraps the errors of a registry whose database cannot be
// reached: the registration was not stored (unless the error also wraps
// ErrUnconfirmed), and asking again later may work.
var ErrUnavailable = errors.New("registry database unavailable")

// ErrUnconfirmed is wrapped, with ErrUnavailable, by the error of a change
// the database did not confirm in time although it may have committed it
// (a synchronous standby that does not answer, a connection lost at the
// commit). The registry follows the users concerned until the database
// says: memory then holds what the database holds, whichever it was.
var ErrUnconfirmed = errors.New("the database did not confirm the change in time; it may still be stored")

// uncertainFor is how long the users of an unconfirmed change are
// followed for this daemon's own commits; a commit that has not ended
// by then is the database's trouble, reported by its own monitoring.
const uncertainFor = time.Hour

// pgPersister keeps the registry in PostgreSQL (internal/pgstore). Memory
// stays the registry's as always, so /notify never waits on the database:
// commits apply what the database then holds for the users they touched,
// and the follower reloads the users other daemons changed, or everything
// after it lost the connection. While the database cannot be reached,
// lookups go on from memory and changes are refused.
type pgPersister struct {
	r   *Registry
	o   PostgresOptions
	cfg pgstore.Options

	st      atomic.Pointer[pgstore.Store] // nil until connected and migrated
	lastErr atomic.Pointer[error]         // last failed commit; nil after one succeeded
	linkErr atomic.Pointer[error]         // why the database is not followed; nil while it is

	// reload keeps commits and reloads apart, so that what a reload read
	// never replaces what a later commit applied.
	reload sync.Mutex

	// uncertain holds the users of commits under way and of commits whose
	// outcome is unknown: this daemon's own notifications for them are
	// followed (a commit may end, and notify, the moment its caller gives
	// up), until a later commit of them returns their state or
	// uncertainFor passes.
	uncertainMu sync.Mutex
	uncertain   map[string]*uncertainty

	kickc     chan struct{}
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	firstLoad chan struct{}
	loadOnce  sync.Once
}

func openPostgres(r *Registry, o PostgresOptions) (*pgPersister, error) {
	if o.Instance == "" {
		host, _ := os.Hostname()
		o.Instance = fmt.Sprintf("%s-%d-%d", host, os.Getpid(), time.Now().UnixNano()%1e6)
	}
	if o.WaitLoad <= 0 {
		o.WaitLoad = 10 * time.Second
	}
	if o.CommitTimeout <= 0 {
		o.CommitTimeout = 3 * time.Second
	}
	p := &pgPersister{
		r: r, o: o,
		cfg: pgstore.Options{URL: o.URL, PasswordFile: o.PasswordFile, MaxPerAccount: r.opts.MaxPerAccount,
			MaxPerUser: r.opts.MaxPerUser, Instance: o.Instance},
		kickc:     make(chan struct{}, 1),
		firstLoad: make(chan struct{}),
		uncertain: make(map[string]*uncertainty),
	}
	// A URL or password file that cannot work stops the start.
	if _, err := pgstore.ParseConfig(p.cfg); err != nil {
		return nil, err
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	unreachable := fmt.Errorf("%w: not connected yet", ErrUnavailable)
	p.linkErr.Store(&unreachable)
	// The first attempt decides about a schema newer than this xapsd:
	// that one is the admin's to fix, retrying cannot.
	ctx, cancel := context.WithTimeout(p.ctx, o.WaitLoad)
	st, err := pgstore.Open(ctx, p.cfg)
	cancel()
	if errors.Is(err, pgstore.ErrSchemaTooNew) {
		p.cancel()
		return nil, err
	}
	if err != nil {
		r.log.WithError(err).Error("PostgreSQL cannot be reached: starting without registrations, loading them once it can; /register answers 503 until then")
		e := fmt.Errorf("%w: %w", ErrUnavailable, err)
		p.linkErr.Store(&e)
	}
	p.wg.Add(3)
	go p.connect(st)
	go p.run()
	go p.recheck()
	if st != nil {
		select {
		case <-p.firstLoad:
		case <-time.After(o.WaitLoad):
			r.log.Warn("PostgreSQL: the registrations are not loaded yet; starting without them, they follow")
		}
	}
	return p, nil
}

// connect opens the store (unless Open already did) and follows it.
func (p *pgPersister) connect(st *pgstore.Store) {
	defer p.wg.Done()
	pause := time.Second
	for st == nil {
		select {
		case <-p.ctx.Done():
			return
		case <-time.After(pause):
		}
		ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
		var err error
		st, err = pgstore.Open(ctx, p.cfg)
		cancel()
		if err != nil {
			if p.ctx.Err() != nil {
				return
			}
			e := fmt.Errorf("%w: %w", ErrUnavailable, err)
			p.linkErr.Store(&e)
			if pause *= 2; pause > 30*time.Second {
				pause = 30 * time.Second
			}
		}
	}
	p.st.Store(st)
	log := p.r.log
	st.Follow(p.ctx, pgstore.Follower{
		Reset: p.reloadAll,
		Changed: func(users []string) {
			if err := p.reloadUsers(p.ctx, users); err != nil && p.ctx.Err() == nil {
				log.WithError(err).Warn("PostgreSQL: could not reload users another daemon changed; reloading everything")
			}
		},
		Err: func(err error) {
			e := fmt.Errorf("%w: %w", ErrUnavailable, err)
			p.linkErr.Store(&e)
			log.WithError(err).Error("PostgreSQL connection lost: pushes go on from memory, /register answers 503 until it is back")
		},
		Connected: func(up bool) {
			if up {
				if p.linkErr.Swap(nil) != nil {
					log.Info("PostgreSQL: following the shared registry")
				}
			}
		},
		Mine: p.isUncertain,
	})
	st.Close()
}

// reloadAll replaces memory with the database's registrations. It builds
// the new maps beside the old ones, so lookups go on meanwhile.
func (p *pgPersister) reloadAll(ctx context.Context) error {
	p.reload.Lock()
	defer p.reload.Unlock()
	start := time.Now()
	st := p.st.Load()
	fresh := &Registry{opts: p.r.opts, log: p.r.log, users: make(map[string][]entry), boxes: make(map[string]*mailboxSet)}
	err := st.LoadAll(ctx, func(g pgstore.Registration) {
		fresh.loadPut(record{User: g.User, AccountID: g.AccountID, DeviceToken: g.DeviceToken,
			Mailboxes: g.Mailboxes, RegistrationTime: g.Registered})
	})
	if err != nil {
		return err
	}
	r := p.r
	r.mu.Lock()
	r.users, r.boxes, r.count = fresh.users, fresh.boxes, fresh.count
	r.mu.Unlock()
	r.log.WithField("registrations", fresh.count).WithField("ms", time.Since(start).Milliseconds()).
		Info("PostgreSQL: registrations loaded")
	p.loadOnce.Do(func() { close(p.firstLoad) })
	return nil
}

func (p *pgPersister) reloadUsers(ctx context.Context, users []string) error {
	p.reload.Lock()
	defer p.reload.Unlock()
	st := p.st.Load()
	if st == nil {
		return nil
	}
	state, err := st.LoadUsers(ctx, users)
	if err != nil {
		return err
	}
	p.r.mu.Lock()
	for u, regs := range state {
		p.r.replaceUser(u, regs)
	}
	p.r.mu.Unlock()
	return nil
}

// replaceUser puts the database's registrations of user into memory.
// Caller holds mu.
func (r *Registry) replaceUser(user string, regs []pgstore.Registration) {
	old := r.users[user]
	for i := range old {
		r.releaseBoxes(old[i].boxes)
	}
	r.count -= len(old)
	if len(regs) == 0 {
		delete(r.users, user)
		return
	}
	// One device per token whatever its case (loadPut): rows an older
	// xapsd stored in both spellings become the newer one.
	keep := make([]pgstore.Registration, 0, len(regs))
next:
	for _, g := range regs {
		g.DeviceToken = FoldToken(g.DeviceToken)
		for i := range keep {
			if keep[i].AccountID == g.AccountID && keep[i].DeviceToken == g.DeviceToken {
				if g.Registered.After(keep[i].Registered) {
					keep[i] = g
				}
				continue next
			}
		}
		keep = append(keep, g)
	}
	es := make([]entry, 0, len(keep))
	for _, g := range keep {
		es = append(es, entry{accountID: g.AccountID, deviceToken: g.DeviceToken,
			boxes: r.internBoxes(g.Mailboxes), registered: g.Registered.UnixNano()})
	}
	r.users[user] = es
	r.count += len(es)
}

func (p *pgPersister) kick() {
	select {
	case p.kickc <- struct{}{}:
	default:
	}
}

// run commits what queued up while the previous commit ran: concurrent
// registrations share one transaction, as they share an fsync with the
// journal.
func (p *pgPersister) run() {
	defer p.wg.Done()
	for {
		select {
		case <-p.ctx.Done():
			p.flush() // what was queued before Close
			return
		case <-p.kickc:
			p.flush()
		}
	}
}

func (p *pgPersister) flush() {
	r := p.r
	b := r.takePending()
	if b == nil {
		return
	}
	err := r.timedSave(b, func() error { return p.commit(b) })
	r.mu.Lock()
	r.adding -= b.adds
	r.mu.Unlock()
	switch {
	case errors.Is(err, ErrUnconfirmed):
		users := batchUsers(b)
		r.log.WithError(err).WithField("users", len(users)).
			Error("PostgreSQL did not confirm a commit in time (a synchronous standby that does not answer?); its registrations were answered 503, and this xapsd reads those users again and follows them until the database says whether it was stored")
		p.lastErr.Store(&err)
		b.finish(err)
		// What the database holds now; a commit still waiting shows
		// later, through its notification (isUncertain).
		ctx, cancel := context.WithTimeout(p.ctx, p.o.CommitTimeout)
		if rerr := p.reloadUsers(ctx, users); rerr != nil && p.ctx.Err() == nil {
			r.log.WithError(rerr).Warn("PostgreSQL: could not read the users of the unconfirmed commit again; their next change or notification does")
		}
		cancel()
	case err != nil:
		r.log.WithError(err).Error("registrations could not be stored in PostgreSQL; they were refused")
		p.lastErr.Store(&err)
		b.finish(err)
	default:
		p.lastErr.Store(nil)
		b.finish(nil)
	}
}

// batchUsers lists the users a batch changes, once each.
func batchUsers(b *batch) []string {
	seen := make(map[string]bool, len(b.recs))
	var users []string
	for _, rec := range b.recs {
		if !seen[rec.User] {
			seen[rec.User] = true
			users = append(users, rec.User)
		}
	}
	return users
}

// uncertainty is what is not known about one user's rows.
type uncertainty struct {
	inflight int       // commits of the user under way
	unknown  time.Time // when a commit's outcome was last unknown; zero: none
}

// commitOutcome says how a commit of users ended, for the uncertain set.
type commitOutcome int

const (
	committed commitOutcome = iota // the state it returned is the database's
	refused                        // rolled back: changes nothing known
	unknown                        // may have committed, now or later
)

// beginCommit marks users as having a commit under way.
func (p *pgPersister) beginCommit(users []string) {
	p.uncertainMu.Lock()
	defer p.uncertainMu.Unlock()
	for _, u := range users {
		c := p.uncertain[u]
		if c == nil {
			c = &uncertainty{}
			p.uncertain[u] = c
		}
		c.inflight++
	}
}

// endCommit records how a commit of users ended. A commit that returned
// their state settles an earlier unknown one too: that one held the
// users' locks until it ended, so the state has it, or not, for good.
func (p *pgPersister) endCommit(users []string, how commitOutcome) {
	now := time.Now()
	p.uncertainMu.Lock()
	defer p.uncertainMu.Unlock()
	for _, u := range users {
		c := p.uncertain[u]
		if c == nil {
			continue
		}
		c.inflight--
		switch how {
		case committed:
			c.unknown = time.Time{}
		case unknown:
			c.unknown = now
		}
		if c.inflight == 0 && c.unknown.IsZero() {
			delete(p.uncertain, u)
		}
	}
}

// isUncertain says whether this daemon's own notification for user must
// be followed (pgstore.Follower.Mine).
func (p *pgPersister) isUncertain(user string) bool {
	p.uncertainMu.Lock()
	defer p.uncertainMu.Unlock()
	c := p.uncertain[user]
	if c == nil {
		return false
	}
	if c.inflight == 0 && time.Since(c.unknown) > uncertainFor {
		delete(p.uncertain, user)
		return false
	}
	return true
}

// recheck tries, every CheckEvery while the last commit failed, whether
// the database takes writes again, so that /readyz recovers without
// waiting for the next registration (which a load balancer that goes by
// /readyz may never send), as the journal does for the disk.
func (p *pgPersister) recheck() {
	defer p.wg.Done()
	tick := time.NewTicker(p.r.opts.CheckEvery)
	defer tick.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-tick.C:
		}
		failed := p.lastErr.Load()
		st := p.st.Load()
		if failed == nil || st == nil || p.linkErr.Load() != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(p.ctx, p.o.CommitTimeout)
		err := st.Writable(ctx)
		cancel()
		// Unless a commit failed again meanwhile.
		if err == nil && p.lastErr.CompareAndSwap(failed, nil) {
			p.r.log.Info("PostgreSQL takes writes again: registrations are stored")
		}
	}
}

func (p *pgPersister) commit(b *batch) error {
	st := p.st.Load()
	if st == nil {
		if e := p.linkErr.Load(); e != nil {
			return *e
		}
		return fmt.Errorf("%w: not connected", ErrUnavailable)
	}
	changes := make([]pgstore.Change, 0, len(b.recs))
	for _, rec := range b.recs {
		if rec.Op == opDel {
			changes = append(changes, pgstore.Change{Del: true, User: rec.User, Acct: rec.AccountID,
				Token: rec.DeviceToken, Before: rec.before})
			continue
		}
		changes = append(changes, pgstore.Change{KeepNewer: rec.keepNewer, Put: &pgstore.Registration{
			User: rec.User, AccountID: rec.AccountID, DeviceToken: rec.DeviceToken,
			Mailboxes: rec.Mailboxes, Registered: rec.RegistrationTime}})
	}
	p.reload.Lock()
	defer p.reload.Unlock()
	// Not p.ctx: at Close the last batch still gets its chance.
	ctx, cancel := context.WithTimeout(context.Background(), p.o.CommitTimeout)
	defer cancel()
	// Marked before the commit: its notification can come the moment
	// the commit ends, before Commit returns.
	users := batchUsers(b)
	p.beginCommit(users)
	state, err := st.Commit(ctx, changes)
	if errors.Is(err, pgstore.ErrOutcomeUnknown) {
		p.endCommit(users, unknown)
		return fmt.Errorf("%w: %w: %w", ErrUnavailable, ErrUnconfirmed, err)
	}
	if err != nil {
		p.endCommit(users, refused)
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	r := p.r
	r.mu.Lock()
	for u, regs := range state {
		r.replaceUser(u, regs)
	}
	r.mu.Unlock()
	p.endCommit(users, committed)
	return nil
}

func (p *pgPersister) health(h *Health) {
	if e := p.linkErr.Load(); e != nil {
		h.WriteErr, h.FollowErr = *e, *e
		return
	}
	if e := p.lastErr.Load(); e != nil {
		h.WriteErr = *e
	}
}

// expire runs the sweep when no other daemon is running it; the users it
// changed are reloaded here and announced to the others.
func (p *pgPersister) expire(cutoff time.Time) int {
	st := p.st.Load()
	if st == nil {
		return 0
	}
	ctx, cancel := context.WithTimeout(p.ctx, time.Minute)
	defer cancel()
	users, n, ran, err := st.Expire(ctx, cutoff)
	if err != nil {
		p.r.log.WithError(err).Warn("PostgreSQL: the expiry sweep failed; the next one tries again")
		return 0
	}
	if !ran {
		return 0
	}
	if err := p.reloadUsers(ctx, users); err != nil {
		p.r.log.WithError(err).Warn("PostgreSQL: could not reload the users the expiry sweep changed")
	}
	return n
}

// capsInStore: the commits enforce the caps in the database.
func (p *pgPersister) capsInStore() bool { return true }

func (p *pgPersister) close() error {
	p.cancel()
	p.wg.Wait()
	return nil
}

// exclusive runs work while no other daemon on the database runs work of
// the same name.
func (p *pgPersister) exclusive(ctx context.Context, name string, work func() error) (bool, error) {
	st := p.st.Load()
	if st == nil {
		return false, fmt.Errorf("%w: not connected", ErrUnavailable)
	}
	return st.Exclusive(ctx, name, work)
}
