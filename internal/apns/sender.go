// Package apns sends the pushes: a bounded, de-duplicated queue in front of
// many concurrent HTTP/2 requests to Apple, with retries for what can
// succeed later and removal of registrations Apple says are dead.
//
// /notify only enqueues, so the Dovecot plugin never waits on Apple.
// Every push to a device is the same request, so a device that is
// already queued is not queued again: the queue holds at most one entry
// per registration whatever the event rate, and a device pushed less
// than MinInterval ago waits for the rest of it, gathering the events
// meanwhile into one push.
//
// Answers that concern every push rather than one device stop the queue
// instead of emptying it: when APNs refuses the credential, or cannot be
// reached, sending pauses and the pushes wait (until they expire) without
// spending their attempts; one push goes out now and then to see whether
// the refusal is over. A BadDeviceToken answer deletes the registration
// only when it is the exception: when most answers are BadDeviceToken, or
// the credential just changed, the cause is the configuration (the wrong
// APNs environment, the wrong certificate), not the devices.
//
// Each of these rules is a small type that owns its state and says what it
// promises: pushQueue (one waiting push per device), pacer (MinInterval),
// credentialPause (APNs refuses the credential) and tokenGuard (when
// BadDeviceToken may delete). The Sender runs them under one lock, and a
// dispatcher hands the ready pushes to the workers.
//
// The HTTP/2 connections under the pushes are package transport's.
package apns

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/apns/transport"
	"github.com/xapsd/xapsd/internal/logging"
	"github.com/xapsd/xapsd/internal/registry"
)

// Remover deletes registrations that Apple reports dead
// (registry.Registry): unless the registration was made at or after
// before (zero: whenever it was made), when kept is true; an error says
// that the removal could not be stored.
type Remover interface {
	Remove(ctx context.Context, k registry.Key, before time.Time) (kept bool, err error)
}

// Outcome classifies one push attempt.
type Outcome string

const (
	Delivered Outcome = "delivered" // APNs accepted it
	Retrying  Outcome = "retrying"  // temporary failure, will be sent again
	Removed   Outcome = "removed"   // the token is dead; registration deleted
	// Kept: Apple says the token is dead, but the device registered again
	// after the time Apple gives, so its registration stays.
	Kept    Outcome = "kept"
	Failed  Outcome = "failed"  // permanent failure, registration kept (also when its removal could not be stored)
	Expired Outcome = "expired" // retried until the push would have expired
	DryRun  Outcome = "dry-run" // logged instead of sent (apnsEndpoint: dry-run)
	// Held: not sent (APNs unreachable) or refused for the credential;
	// the push waits in the queue while sending is paused, and the
	// attempt does not count.
	Held Outcome = "held"
)

// Why sending is paused (Sender.Paused).
const (
	PauseCredential  = "credential"  // APNs refuses the credential
	PauseUnreachable = "unreachable" // xapsd cannot connect to APNs
)

// Result describes one push attempt, for logs, metrics and test-push.
type Result struct {
	Device   registry.Key
	Outcome  Outcome
	Status   int    // HTTP status from APNs; 0 for a transport error
	Reason   string // APNs reason or transport error
	ApnsID   string
	Attempt  int
	Duration time.Duration
	Test     bool // a test-push: tried once, never retried
}

// Options configures a Sender.
//
// The daemon passes the configuration's values (internal/config holds
// every default) under the configuration's names, less the APNs that
// this package's name says (apnsConcurrency is Concurrency here).
type Options struct {
	Concurrency int           // pushes in flight; at least 1
	Expiration  time.Duration // apns-expiration = now + this; more than 0
	Priority    int           // 0 = header not sent; else 5 or 10
	// MinInterval is the shortest time between two pushes to one device
	// (0: none). Events within it are merged into one push at its end.
	MinInterval time.Duration
	Remover     Remover
	Log         logrus.FieldLogger // nil: nothing is logged
	OnResult    func(Result)       // optional, called for every attempt
	// Backoff bounds for retries (0: at once); jitter spreads them.
	MinBackoff, MaxBackoff time.Duration
	// ProbeInterval is how often one push is tried while APNs refuses
	// the credential.
	ProbeInterval time.Duration
	// TrustAfterChange: for this long after a credential change,
	// BadDeviceToken never deletes a registration (0: from the start).
	TrustAfterChange time.Duration
	Now              func() time.Time // nil: time.Now

	// looked, when set (by tests), sees each look of the dispatcher at
	// the queue: how many pushes were waiting and whether one went out.
	// A test that proves a push was held waits for such a look instead
	// of sleeping.
	looked func(waiting int, sent bool)
}

// Sender owns the push queue. Create it with New, start it with Run.
type Sender struct {
	opts      Options
	log       logrus.FieldLogger
	client    atomic.Pointer[Client]
	sem       chan struct{} // a slot for each push in flight
	kickc     chan struct{} // wakes the dispatcher
	lastLog   sync.Map      // message kind → *atomic.Int64 for logging.EveryMinute
	deadlines pushDeadlines // the contexts of the pushes in flight

	// mu guards the queue and the rules below. Their methods run under
	// it; the Sender's own methods take it, except those named ...Locked,
	// which are called with it held.
	mu     sync.Mutex
	idle   *sync.Cond      // signalled when a push in flight ends or the queue cannot move
	queue  pushQueue       // one waiting push per device
	pacing pacer           // MinInterval between two pushes to a device
	paused credentialPause // APNs refuses the credential
	guard  tokenGuard      // BadDeviceToken deletes only the exception
}

// New returns a Sender using client until SetClient replaces it.
func New(client *Client, o Options) *Sender {
	if o.Concurrency < 1 {
		// A programming error: the configuration allows no such value.
		panic("apns.New: Concurrency must be at least 1")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		l := logrus.New()
		l.SetLevel(logrus.PanicLevel)
		o.Log = l
	}
	now := o.Now()
	s := &Sender{opts: o, log: o.Log, kickc: make(chan struct{}, 1), sem: make(chan struct{}, o.Concurrency),
		queue: newPushQueue(), pacing: newPacer(o.MinInterval, now), guard: newTokenGuard(o.TrustAfterChange, now)}
	s.idle = sync.NewCond(&s.mu)
	s.client.Store(client)
	return s
}

// SetClient swaps the credentials; pushes already in flight finish with
// the old ones. A pause for the previous credential's refusal ends, and
// for TrustAfterChange BadDeviceToken deletes nothing: a wrong new
// credential must not empty the registry.
func (s *Sender) SetClient(c *Client) {
	s.client.Store(c)
	s.mu.Lock()
	resumed := s.paused.active()
	s.paused = credentialPause{}
	s.guard.changed(s.opts.Now())
	s.idle.Broadcast()
	s.mu.Unlock()
	if resumed {
		s.log.Info("new credentials: sending resumed")
	}
	s.kick()
}

// Client returns the current credentials.
func (s *Sender) Client() *Client { return s.client.Load() }

// Paused says why sending is paused, or nil: cause is PauseCredential or
// PauseUnreachable.
func (s *Sender) Paused() (cause string, why error) {
	s.mu.Lock()
	err := s.paused.err()
	s.mu.Unlock()
	if err != nil {
		return PauseCredential, err
	}
	if until, err := s.client.Load().unreachable(); !until.IsZero() {
		return PauseUnreachable, fmt.Errorf("sending paused: %w", &transport.UnreachableError{Err: err, Until: until})
	}
	return "", nil
}

// Why a push waits (Waiting.Why).
const (
	WaitQueued   = "queued"    // in the queue, goes out as soon as a worker is free
	WaitInFlight = "in flight" // sent, Apple has not answered yet
	WaitPacing   = "pacing"    // the device was pushed less than MinInterval ago
	WaitRetry    = "retry"     // the last attempt failed for now; tried again at Until
	WaitPaused   = "paused"    // sending is paused (Paused says why)
)

// Waiting is a push to one device that has not been answered yet.
type Waiting struct {
	Why     string    // one of the Wait words
	Until   time.Time // WaitPacing and WaitRetry: when it goes back in the queue
	Attempt int       // attempts made so far
}

// Waiting reports whether a push to k waits, and for what: for xapsd
// diagnose, which shows whether a push is held back and by what.
func (s *Sender) Waiting(k registry.Key) (Waiting, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, waits := s.queue.get(k)
	switch {
	case waits && j.timer != nil && j.paced:
		return Waiting{Why: WaitPacing, Until: j.due, Attempt: j.attempt}, true
	case waits && j.timer != nil:
		return Waiting{Why: WaitRetry, Until: j.due, Attempt: j.attempt}, true
	case waits && s.stuckLocked():
		return Waiting{Why: WaitPaused, Attempt: j.attempt}, true
	case waits:
		return Waiting{Why: WaitQueued, Attempt: j.attempt}, true
	case s.queue.inFlight(k):
		return Waiting{Why: WaitInFlight}, true
	}
	return Waiting{}, false
}

// stuckLocked says whether the queue cannot move now: sending is paused
// and no probe is on its way, or APNs cannot be reached.
func (s *Sender) stuckLocked() bool {
	if s.paused.holds() {
		return true
	}
	until, _ := s.client.Load().unreachable()
	return !until.IsZero()
}

// Enqueue asks for one push to the device. It never blocks; a device that
// is already waiting to be pushed is not added twice, and one pushed less
// than MinInterval ago waits for the rest of it.
func (s *Sender) Enqueue(k registry.Key) {
	s.mu.Lock()
	if s.queue.has(k) {
		s.mu.Unlock()
		return
	}
	now := s.opts.Now()
	j := &job{key: k, deadline: now.Add(s.opts.Expiration)}
	if wait := s.pacing.wait(k, now); wait > 0 && !s.queue.halted() {
		j.paced = true
		s.queue.add(j, false)
		s.readyAfterLocked(j, wait)
		s.mu.Unlock()
		return
	}
	s.queue.add(j, true)
	s.mu.Unlock()
	s.kick()
}

// Depth reports queued (including those waiting for a retry) and
// in-flight pushes.
func (s *Sender) Depth() (queued, inFlight int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queue.depth()
}

func (s *Sender) kick() {
	select {
	case s.kickc <- struct{}{}:
	default:
	}
}

// logEveryMinute runs f with the sender's log at most once a minute for
// kind: problems that concern every push are said once, not once per push.
func (s *Sender) logEveryMinute(kind string, f func(logrus.FieldLogger)) {
	v, _ := s.lastLog.LoadOrStore(kind, new(atomic.Int64))
	if logging.EveryMinute(v.(*atomic.Int64)) {
		f(s.log)
	}
}
