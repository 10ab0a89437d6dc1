// Package pgstore keeps the registry in PostgreSQL, so that several xapsd
// can share one. It implements registry.Store: the registry
// (internal/registry) holds every registration in memory as always and
// hands this package each batch of changes to make durable; this package
// also tells it about the changes other daemons make.
//
// The database is the authority. A commit writes a batch of changes in one
// transaction (registrations of many concurrent /register requests share
// it, as they share an fsync with the file journal), enforces the caps per
// account and per user there, so that they hold across daemons, and returns
// the resulting registrations of every user it touched; the registry puts
// those into memory. Every commit also sends a NOTIFY naming the users it
// changed; each daemon LISTENs, reloads those users, and reloads everything
// after it lost the connection. Work that must happen once (the expiry
// sweep, Apple ID renewal) runs under an advisory lock.
//
// The schema is created and migrated by xapsd itself, in numbered
// migrations applied under an advisory lock, so that daemons starting
// together end with one schema; a database with a newer schema than this
// xapsd knows is refused.
//
// Store (store.go) is what the registry sees: the connection made, lost
// and made again, the first load, commits whose outcome is unknown, the
// check whether the database takes writes again. db (db.go) and the
// follower (follow.go) are the SQL beneath it.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/logging"
	"github.com/xapsd/xapsd/internal/registry"
)

// Options select the database, shared by every xapsd that points at it
// (docs/operations.md#running-several-xapsd).
type Options struct {
	// DatabaseURL is a postgres:// URL or a libpq keyword string; missing
	// parts come from the PG* environment variables.
	// DatabasePasswordFile, when set, holds the password.
	DatabaseURL          string
	DatabasePasswordFile string
	// DatabaseWaitLoad is how long Load waits for the database, to connect
	// and then to load, before the daemon starts without registrations, to
	// load them once it can. DatabaseCommitTimeout bounds one commit,
	// retries included: a /register waits no longer for a database that
	// does not answer. 0: no bound.
	DatabaseWaitLoad      time.Duration
	DatabaseCommitTimeout time.Duration
	// MaxDevicesPerAccount and MaxDevicesPerUser are the caps the commits
	// apply, in the database, so that they hold across daemons. 0: no cap.
	MaxDevicesPerAccount int
	MaxDevicesPerUser    int
	// RegistryCheckInterval is how often, after a failed commit, the store
	// tries whether the database takes writes again. 0: it does not.
	RegistryCheckInterval time.Duration
	// Instance names this daemon in the change notifications, so that it
	// does not reload its own changes; "": the host name and process id.
	Instance string
	// Log gets what the store has to say; nil: nothing is logged.
	Log logrus.FieldLogger
}

// uncertainFor is how long the users of an unconfirmed change are
// followed for this daemon's own commits; a commit that has not ended
// by then is the database's trouble, reported by its own monitoring.
const uncertainFor = time.Hour

// Store keeps the registry in PostgreSQL. registry.Memory
// stays the registry's as always, so /notify never waits on the database:
// commits return what the database then holds for the users they touched,
// and Follow reloads the users other daemons changed, or everything after
// it lost the connection. While the database cannot be reached, lookups
// go on from memory and changes are refused.
type Store struct {
	o          Options
	log        logrus.FieldLogger
	checkEvery time.Duration
	m          *registry.Memory // set by Load

	st        atomic.Pointer[db]    // nil until connected and migrated
	listening *listener             // what Load listened on, for Follow
	lastErr   atomic.Pointer[error] // last failed commit; nil after one succeeded
	linkErr   atomic.Pointer[error] // why the database is not followed; nil while it is

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

// New is the store in the database o names. It connects when the
// registry loads it (registry.Open).
func New(o Options) *Store {
	if o.Log == nil {
		o.Log = logging.Discard()
	}
	if o.Instance == "" {
		host, _ := os.Hostname()
		o.Instance = fmt.Sprintf("%s-%d-%d", host, os.Getpid(), time.Now().UnixNano()%1e6)
	}
	p := &Store{o: o, log: o.Log, checkEvery: o.RegistryCheckInterval, uncertain: make(map[string]*uncertainty)}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p
}

// within is ctx bounded by d, or not bounded when d is 0.
func within(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// Shared is true: every daemon on the database changes it.
func (p *Store) Shared() bool { return true }

// Load connects, listens for other daemons' changes and loads every
// registration, waiting WaitLoad for each of the two steps. A database
// that cannot be reached, or not loaded in time, leaves memory empty;
// Follow loads it once it can.
func (p *Store) Load(ctx context.Context, m *registry.Memory) error {
	p.m = m
	// A URL or password file that cannot work stops the start.
	if _, err := parseConfig(p.o); err != nil {
		return err
	}
	unreachable := fmt.Errorf("%w: not connected yet", registry.ErrUnavailable)
	p.linkErr.Store(&unreachable)
	// The first attempt decides about a schema newer than this xapsd:
	// that one is the admin's to fix, retrying cannot.
	octx, cancel := within(p.ctx, p.o.DatabaseWaitLoad)
	st, err := openDB(octx, p.o)
	cancel()
	if errors.Is(err, ErrSchemaTooNew) {
		return err
	}
	if p.checkEvery > 0 {
		p.wg.Add(1)
		go p.recheck()
	}
	if err != nil {
		p.log.WithError(err).Error("PostgreSQL cannot be reached: starting without registrations, loading them once it can; /register answers 503 until then")
		e := fmt.Errorf("%w: %w", registry.ErrUnavailable, err)
		p.linkErr.Store(&e)
		return nil
	}
	p.st.Store(st)
	lctx, cancel := within(p.ctx, p.o.DatabaseWaitLoad)
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
func (p *Store) Follow(*registry.Memory) {
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
		st, err = openDB(ctx, p.o)
		cancel()
		if err != nil {
			if p.ctx.Err() != nil {
				return
			}
			e := fmt.Errorf("%w: %w", registry.ErrUnavailable, err)
			p.linkErr.Store(&e)
			if pause *= 2; pause > 30*time.Second {
				pause = 30 * time.Second
			}
		}
	}
	p.st.Store(st)
	log := p.log
	st.Follow(p.ctx, follower{
		Reset: p.reloadAll,
		Changed: func(users []string) {
			if err := p.reloadUsers(p.ctx, users); err != nil && p.ctx.Err() == nil {
				log.WithError(err).Warn("PostgreSQL: could not reload users another daemon changed; reloading everything")
			}
		},
		Err: func(err error) {
			e := fmt.Errorf("%w: %w", registry.ErrUnavailable, err)
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
func (p *Store) reloadAll(ctx context.Context) error {
	start := time.Now()
	st := p.st.Load()
	n, err := p.m.ReplaceAll(func(put func(registry.Registration)) error {
		return st.LoadAll(ctx, put)
	})
	if err != nil {
		return err
	}
	p.log.WithField("registrations", n).WithField("ms", time.Since(start).Milliseconds()).
		Info("PostgreSQL: registrations loaded")
	return nil
}

func (p *Store) reloadUsers(ctx context.Context, users []string) error {
	if p.st.Load() == nil {
		return nil
	}
	return p.m.Reload(ctx, users, p.readUsers)
}

// readUsers reads the registrations of users from the database.
func (p *Store) readUsers(ctx context.Context, users []string) (map[string][]registry.Registration, error) {
	st := p.st.Load()
	if st == nil {
		return nil, fmt.Errorf("%w: not connected", registry.ErrUnavailable)
	}
	return st.LoadUsers(ctx, users)
}

// rereadSoon reads the users of an unconfirmed commit again once the
// registry has answered it: what the database holds now. A commit still
// waiting shows later, through its notification (isUncertain).
func (p *Store) rereadSoon(users []string) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		ctx, cancel := within(p.ctx, p.o.DatabaseCommitTimeout)
		defer cancel()
		if err := p.reloadUsers(ctx, users); err != nil && p.ctx.Err() == nil {
			p.log.WithError(err).Warn("PostgreSQL: could not read the users of the unconfirmed commit again; their next change or notification does")
		}
	}()
}

// changedUsers lists the users changes touch, once each.
func changedUsers(changes []registry.Change) []string {
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
func (p *Store) beginCommit(users []string) {
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
func (p *Store) endCommit(users []string, how commitOutcome) {
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
func (p *Store) isUncertain(user string) bool {
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
func (p *Store) recheck() {
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
		ctx, cancel := within(p.ctx, p.o.DatabaseCommitTimeout)
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
func (p *Store) Commit(_ context.Context, changes []registry.Change) (registry.Committed, error) {
	state, err := p.commit(changes)
	if err != nil {
		if errors.Is(err, registry.ErrUnconfirmed) {
			p.log.WithError(err).WithField("users", len(changedUsers(changes))).
				Error("PostgreSQL did not confirm a commit in time (a synchronous standby that does not answer?); its registrations were answered 503, and this xapsd reads those users again and follows them until the database says whether it was stored")
		} else {
			p.log.WithError(err).Error("registrations could not be stored in PostgreSQL; they were refused")
		}
		p.lastErr.Store(&err)
		return registry.Committed{}, err
	}
	p.lastErr.Store(nil)
	return registry.Committed{Users: state}, nil
}

func (p *Store) commit(changes []registry.Change) (map[string][]registry.Registration, error) {
	st := p.st.Load()
	if st == nil {
		if e := p.linkErr.Load(); e != nil {
			return nil, *e
		}
		return nil, fmt.Errorf("%w: not connected", registry.ErrUnavailable)
	}
	// Not p.ctx: at Close the last batch still gets its chance.
	ctx, cancel := within(context.Background(), p.o.DatabaseCommitTimeout)
	defer cancel()
	// Marked before the commit: its notification can come the moment
	// the commit ends, before Commit returns.
	users := changedUsers(changes)
	p.beginCommit(users)
	state, err := st.Commit(ctx, changes)
	if errors.Is(err, ErrOutcomeUnknown) {
		p.endCommit(users, unknown)
		p.rereadSoon(users)
		return nil, fmt.Errorf("%w: %w: %w", registry.ErrUnavailable, registry.ErrUnconfirmed, err)
	}
	if err != nil {
		p.endCommit(users, refused)
		return nil, fmt.Errorf("%w: %w", registry.ErrUnavailable, err)
	}
	p.endCommit(users, committed)
	return state, nil
}

// registry.Health says whether the database is followed and takes commits.
func (p *Store) Health() registry.Health {
	var h registry.Health
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
func (p *Store) Expire(_ context.Context, cutoff time.Time, _ []registry.Change) (registry.Committed, int, error) {
	st := p.st.Load()
	if st == nil {
		return registry.Committed{}, 0, fmt.Errorf("expiry sweep: %w: not connected", registry.ErrUnavailable)
	}
	ctx, cancel := context.WithTimeout(p.ctx, time.Minute)
	defer cancel()
	users, n, ran, err := st.Expire(ctx, cutoff)
	if err != nil {
		return registry.Committed{}, 0, fmt.Errorf("expiry sweep: %w", err)
	}
	if !ran {
		return registry.Committed{}, 0, nil
	}
	state, err := st.LoadUsers(ctx, users)
	if err != nil {
		p.log.WithError(err).Warn("PostgreSQL: could not reload the users the expiry sweep changed")
		return registry.Committed{}, n, nil
	}
	return registry.Committed{Users: state}, n, nil
}

// Close stops following the database and the checks.
func (p *Store) Close() error {
	p.cancel()
	p.wg.Wait()
	return nil
}

// Exclusive runs work while no other daemon on the database runs work of
// the same name.
func (p *Store) Exclusive(ctx context.Context, name string, work func() error) (bool, error) {
	st := p.st.Load()
	if st == nil {
		return false, fmt.Errorf("%w: not connected", registry.ErrUnavailable)
	}
	return st.Exclusive(ctx, name, work)
}
