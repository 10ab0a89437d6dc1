package registry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

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
	// MaxPerAccount and MaxPerUser are the caps the commits apply.
	MaxPerAccount int
	MaxPerUser    int
	// CheckEvery is how often, after a failed commit, the store tries
	// whether the database takes writes again (default 5 s).
	CheckEvery time.Duration
	Log        logrus.FieldLogger
}

// uncertainFor is how long the users of an unconfirmed change are
// followed for this daemon's own commits; a commit that has not ended
// by then is the database's trouble, reported by its own monitoring.
const uncertainFor = time.Hour

// pgPersister keeps the registry in PostgreSQL (internal/pgstore). Memory
// stays the registry's as always, so /notify never waits on the database:
// commits return what the database then holds for the users they touched,
// and Follow reloads the users other daemons changed, or everything after
// it lost the connection. While the database cannot be reached, lookups
// go on from memory and changes are refused.
type pgPersister struct {
	o          PostgresOptions
	cfg        pgstore.Options
	log        logrus.FieldLogger
	checkEvery time.Duration
	m          *Memory // set by Load

	st        atomic.Pointer[pgstore.Store] // nil until connected and migrated
	listening *pgstore.Listener             // what Load listened on, for Follow
	lastErr   atomic.Pointer[error]         // last failed commit; nil after one succeeded
	linkErr   atomic.Pointer[error]         // why the database is not followed; nil while it is

	// uncertain holds the users of commits under way and of commits whose
	// outcome is unknown: this daemon's own notifications for them are
	// followed (a commit may end, and notify, the moment its caller gives
	// up), until a later commit of them returns their state or
	// uncertainFor passes.
	uncertainMu sync.Mutex
	uncertain   map[string]*uncertainty

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewPostgres is the store in the PostgreSQL database o names.
func NewPostgres(o PostgresOptions) Store {
	if o.MaxPerAccount <= 0 {
		o.MaxPerAccount = 8
	}
	if o.MaxPerUser <= 0 {
		o.MaxPerUser = 100
	}
	if o.CheckEvery <= 0 {
		o.CheckEvery = 5 * time.Second
	}
	if o.Log == nil {
		l := logrus.New()
		l.SetLevel(logrus.PanicLevel)
		o.Log = l
	}
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
		o: o, log: o.Log, checkEvery: o.CheckEvery,
		cfg: pgstore.Options{URL: o.URL, PasswordFile: o.PasswordFile, MaxPerAccount: o.MaxPerAccount,
			MaxPerUser: o.MaxPerUser, Instance: o.Instance},
		uncertain: make(map[string]*uncertainty),
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p
}

// Shared is true: every daemon on the database changes it.
func (p *pgPersister) Shared() bool { return true }

// Load connects, listens for other daemons' changes and loads every
// registration, waiting WaitLoad for each of the two steps. A database
// that cannot be reached, or not loaded in time, leaves memory empty;
// Follow loads it once it can.
func (p *pgPersister) Load(ctx context.Context, m *Memory) error {
	p.m = m
	// A URL or password file that cannot work stops the start.
	if _, err := pgstore.ParseConfig(p.cfg); err != nil {
		return err
	}
	unreachable := fmt.Errorf("%w: not connected yet", ErrUnavailable)
	p.linkErr.Store(&unreachable)
	// The first attempt decides about a schema newer than this xapsd:
	// that one is the admin's to fix, retrying cannot.
	octx, cancel := context.WithTimeout(p.ctx, p.o.WaitLoad)
	st, err := pgstore.Open(octx, p.cfg)
	cancel()
	if errors.Is(err, pgstore.ErrSchemaTooNew) {
		return err
	}
	p.wg.Add(1)
	go p.recheck()
	if err != nil {
		p.log.WithError(err).Error("PostgreSQL cannot be reached: starting without registrations, loading them once it can; /register answers 503 until then")
		e := fmt.Errorf("%w: %w", ErrUnavailable, err)
		p.linkErr.Store(&e)
		return nil
	}
	p.st.Store(st)
	lctx, cancel := context.WithTimeout(p.ctx, p.o.WaitLoad)
	defer cancel()
	l, err := st.Listen(lctx)
	if err == nil {
		if err = p.reloadAll(lctx); err != nil {
			l.Close()
		}
	}
	if err != nil {
		p.log.WithError(err).Warn("PostgreSQL: the registrations are not loaded yet; starting without them, they follow")
		return nil
	}
	p.listening = l
	p.linkErr.Store(nil)
	p.log.Info("PostgreSQL: following the shared registry")
	return nil
}

// Follow connects (unless Load did) and follows the database until Close.
func (p *pgPersister) Follow(*Memory) {
	st := p.st.Load()
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
	log := p.log
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
	}, p.listening)
	st.Close()
}

// reloadAll replaces memory with the database's registrations.
func (p *pgPersister) reloadAll(ctx context.Context) error {
	start := time.Now()
	st := p.st.Load()
	n, err := p.m.ReplaceAll(func(put func(Registration)) error {
		return st.LoadAll(ctx, func(g pgstore.Registration) { put(fromRow(g)) })
	})
	if err != nil {
		return err
	}
	p.log.WithField("registrations", n).WithField("ms", time.Since(start).Milliseconds()).
		Info("PostgreSQL: registrations loaded")
	return nil
}

func (p *pgPersister) reloadUsers(ctx context.Context, users []string) error {
	if p.st.Load() == nil {
		return nil
	}
	return p.m.Reload(ctx, users, p.readUsers)
}

// readUsers reads the registrations of users from the database.
func (p *pgPersister) readUsers(ctx context.Context, users []string) (map[string][]Registration, error) {
	st := p.st.Load()
	if st == nil {
		return nil, fmt.Errorf("%w: not connected", ErrUnavailable)
	}
	state, err := st.LoadUsers(ctx, users)
	if err != nil {
		return nil, err
	}
	return fromRows(state), nil
}

func fromRow(g pgstore.Registration) Registration {
	return Registration{Key: Key{User: g.User, AccountID: g.AccountID, DeviceToken: g.DeviceToken},
		Mailboxes: g.Mailboxes, Registered: g.Registered}
}

func fromRows(state map[string][]pgstore.Registration) map[string][]Registration {
	out := make(map[string][]Registration, len(state))
	for u, rows := range state {
		regs := make([]Registration, len(rows))
		for i, g := range rows {
			regs[i] = fromRow(g)
		}
		out[u] = regs
	}
	return out
}

// rereadSoon reads the users of an unconfirmed commit again once the
// registry has answered it: what the database holds now. A commit still
// waiting shows later, through its notification (isUncertain).
func (p *pgPersister) rereadSoon(users []string) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		ctx, cancel := context.WithTimeout(p.ctx, p.o.CommitTimeout)
		defer cancel()
		if err := p.reloadUsers(ctx, users); err != nil && p.ctx.Err() == nil {
			p.log.WithError(err).Warn("PostgreSQL: could not read the users of the unconfirmed commit again; their next change or notification does")
		}
	}()
}

// changedUsers lists the users changes touch, once each.
func changedUsers(changes []Change) []string {
	seen := make(map[string]bool, len(changes))
	var users []string
	for _, c := range changes {
		if !seen[c.User] {
			seen[c.User] = true
			users = append(users, c.User)
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
	tick := time.NewTicker(p.checkEvery)
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
			p.log.Info("PostgreSQL takes writes again: registrations are stored")
		}
	}
}

// Commit stores the changes in one transaction, which applies the caps
// and tells the other daemons, and returns the touched users as the
// database now has them.
func (p *pgPersister) Commit(_ context.Context, changes []Change) (Committed, error) {
	state, err := p.commit(changes)
	if err != nil {
		if errors.Is(err, ErrUnconfirmed) {
			p.log.WithError(err).WithField("users", len(changedUsers(changes))).
				Error("PostgreSQL did not confirm a commit in time (a synchronous standby that does not answer?); its registrations were answered 503, and this xapsd reads those users again and follows them until the database says whether it was stored")
		} else {
			p.log.WithError(err).Error("registrations could not be stored in PostgreSQL; they were refused")
		}
		p.lastErr.Store(&err)
		return Committed{}, err
	}
	p.lastErr.Store(nil)
	return Committed{Users: fromRows(state)}, nil
}

func (p *pgPersister) commit(changes []Change) (map[string][]pgstore.Registration, error) {
	st := p.st.Load()
	if st == nil {
		if e := p.linkErr.Load(); e != nil {
			return nil, *e
		}
		return nil, fmt.Errorf("%w: not connected", ErrUnavailable)
	}
	pcs := make([]pgstore.Change, 0, len(changes))
	for _, c := range changes {
		if c.Del {
			pcs = append(pcs, pgstore.Change{Del: true, User: c.User, Acct: c.AccountID,
				Token: c.DeviceToken, Before: c.Before})
			continue
		}
		pcs = append(pcs, pgstore.Change{KeepNewer: c.KeepNewer, Put: &pgstore.Registration{
			User: c.User, AccountID: c.AccountID, DeviceToken: c.DeviceToken,
			Mailboxes: c.Mailboxes, Registered: c.Registered}})
	}
	// Not p.ctx: at Close the last batch still gets its chance.
	ctx, cancel := context.WithTimeout(context.Background(), p.o.CommitTimeout)
	defer cancel()
	// Marked before the commit: its notification can come the moment
	// the commit ends, before Commit returns.
	users := changedUsers(changes)
	p.beginCommit(users)
	state, err := st.Commit(ctx, pcs)
	if errors.Is(err, pgstore.ErrOutcomeUnknown) {
		p.endCommit(users, unknown)
		p.rereadSoon(users)
		return nil, fmt.Errorf("%w: %w: %w", ErrUnavailable, ErrUnconfirmed, err)
	}
	if err != nil {
		p.endCommit(users, refused)
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	p.endCommit(users, committed)
	return state, nil
}

// Health says whether the database is followed and takes commits.
func (p *pgPersister) Health() Health {
	var h Health
	if e := p.linkErr.Load(); e != nil {
		h.WriteErr, h.FollowErr = *e, *e
		return h
	}
	if e := p.lastErr.Load(); e != nil {
		h.WriteErr = *e
	}
	return h
}

// Expire runs the sweep when no other daemon is running it, and returns
// the users it changed as the database now has them; the database
// announces them to the other daemons.
func (p *pgPersister) Expire(_ context.Context, cutoff time.Time, _ []Change) (Committed, int, error) {
	st := p.st.Load()
	if st == nil {
		return Committed{}, 0, fmt.Errorf("expiry sweep: %w: not connected", ErrUnavailable)
	}
	ctx, cancel := context.WithTimeout(p.ctx, time.Minute)
	defer cancel()
	users, n, ran, err := st.Expire(ctx, cutoff)
	if err != nil {
		return Committed{}, 0, fmt.Errorf("expiry sweep: %w", err)
	}
	if !ran {
		return Committed{}, 0, nil
	}
	state, err := st.LoadUsers(ctx, users)
	if err != nil {
		p.log.WithError(err).Warn("PostgreSQL: could not reload the users the expiry sweep changed")
		return Committed{}, n, nil
	}
	return Committed{Users: fromRows(state)}, n, nil
}

// Close stops following the database and the checks.
func (p *pgPersister) Close() error {
	p.cancel()
	p.wg.Wait()
	return nil
}

// Exclusive runs work while no other daemon on the database runs work of
// the same name.
func (p *pgPersister) Exclusive(ctx context.Context, name string, work func() error) (bool, error) {
	st := p.st.Load()
	if st == nil {
		return false, fmt.Errorf("%w: not connected", ErrUnavailable)
	}
	return st.Exclusive(ctx, name, work)
}
