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
// The HTTP/2 connections under the pushes are package transport's.
package apns

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/apns/transport"
	"github.com/xapsd/xapsd/internal/logging"
	"github.com/xapsd/xapsd/internal/registry"
)

// Remover deletes registrations that Apple reports dead. A zero before
// removes unconditionally.
type Remover interface {
	Remove(k registry.Key, before time.Time) bool
}

// Outcome classifies one push attempt.
type Outcome string

const (
	Delivered Outcome = "delivered" // APNs accepted it
	Retrying  Outcome = "retrying"  // temporary failure, will be sent again
	Removed   Outcome = "removed"   // the token is dead; registration deleted
	Failed    Outcome = "failed"    // permanent failure, registration kept
	Expired   Outcome = "expired"   // retried until the push would have expired
	DryRun    Outcome = "dry-run"   // logged instead of sent (apnsEndpoint: dry-run)
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

	// refused: a test push that was held (the credential refused, or
	// APNs unreachable) and is reported as failed; it must not end a
	// pause the way an answer about the device does.
	refused bool
}

// Options configures a Sender.
type Options struct {
	Concurrency int           // pushes in flight (default 1000)
	Expiration  time.Duration // apns-expiration = now + this (default 24h)
	Priority    int           // 0 = header not sent; else 5 or 10
	// MinInterval is the shortest time between two pushes to one device
	// (0: none). Events within it are merged into one push at its end.
	MinInterval time.Duration
	Remover     Remover
	Log         logrus.FieldLogger
	OnResult    func(Result) // optional, called for every attempt
	// Backoff bounds for retries; jitter spreads them.
	MinBackoff, MaxBackoff time.Duration
	// ProbeInterval (default 1 min) is how often one push is tried while
	// APNs refuses the credential.
	ProbeInterval time.Duration
	// TrustAfterChange (default 10 min): for this long after a credential
	// change, BadDeviceToken never deletes a registration.
	TrustAfterChange time.Duration
	Now              func() time.Time

	// looked, when set (by tests), sees each look of the dispatcher at
	// the queue: how many pushes were waiting and whether one went out.
	// A test that proves a push was held waits for such a look instead
	// of sleeping.
	looked func(waiting int, sent bool)
}

type job struct {
	key      registry.Key
	attempt  int
	deadline time.Time // expiration of the push; no retry past it
	timer    *time.Timer
	due      time.Time // when timer puts it back in the queue
	paced    bool      // timer waits for MinInterval, not for a retry
	probe    bool      // sent to see whether APNs still refuses the credential
	test     bool      // PushNow: one attempt, reported as a test
}

// pause is the state of a paused queue: APNs refuses the credential.
type pause struct {
	on      bool
	reason  string    // for /readyz and the log
	since   time.Time // when it paused, for /readyz
	probeAt time.Time // when one push may go out to try again
	probing bool      // that push is on its way
}

// guardWindow is how many recent answers decide whether BadDeviceToken is
// common.
const guardWindow = 50

// Sender owns the push queue. Create it with New, start it with Run.
type Sender struct {
	opts   Options
	log    logrus.FieldLogger
	client atomic.Pointer[Client]

	mu       sync.Mutex
	queue    []*job                // FIFO of jobs ready to send
	queued   map[registry.Key]*job // ready or waiting for a retry
	flying   map[registry.Key]int  // devices with a push in flight, and how many
	stopping bool
	kickc    chan struct{}
	idle     *sync.Cond // signalled when a push in flight ends or the queue is blocked

	pause       pause
	unreachable bool // the dispatcher waits for APNs to be reachable

	// pushed holds when each device was last pushed, in two generations
	// of at least MinInterval each, so it only remembers recent pushes.
	pushed, pushedBefore map[registry.Key]time.Time
	pushedSince          time.Time

	// The last guardWindow answers from APNs: whether each was a
	// BadDeviceToken (or DeviceTokenNotForTopic).
	answers     [guardWindow]bool
	answerNext  int
	answerCount int
	badCount    int
	changedAt   time.Time // the credential's last change
	guardLogged time.Time // the last "devices kept" error; zero when the guard is off

	sem     chan struct{}
	lastLog sync.Map // message kind → *atomic.Int64 for logging.EveryMinute
}

// New returns a Sender using client until SetClient replaces it.
func New(client *Client, o Options) *Sender {
	if o.Concurrency <= 0 {
		o.Concurrency = 1000
	}
	if o.Expiration <= 0 {
		o.Expiration = 24 * time.Hour
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 5 * time.Minute
	}
	if o.ProbeInterval <= 0 {
		o.ProbeInterval = time.Minute
	}
	if o.TrustAfterChange <= 0 {
		o.TrustAfterChange = 10 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		l := logrus.New()
		l.SetLevel(logrus.PanicLevel)
		o.Log = l
	}
	s := &Sender{opts: o, log: o.Log, queued: make(map[registry.Key]*job), flying: make(map[registry.Key]int),
		kickc: make(chan struct{}, 1), sem: make(chan struct{}, o.Concurrency), changedAt: o.Now()}
	if o.MinInterval > 0 {
		s.pushed, s.pushedBefore, s.pushedSince = map[registry.Key]time.Time{}, map[registry.Key]time.Time{}, o.Now()
	}
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
	resumed := s.pause.on
	s.pause = pause{}
	s.changedAt = s.opts.Now()
	s.answers, s.answerNext, s.answerCount, s.badCount = [guardWindow]bool{}, 0, 0, 0
	s.idle.Broadcast()
	s.mu.Unlock()
	if resumed {
		s.log.Info("new credentials: sending resumed")
	}
	s.kick()
}

// Paused says why sending is paused, or nil: cause is PauseCredential or
// PauseUnreachable.
func (s *Sender) Paused() (cause string, why error) {
	s.mu.Lock()
	p := s.pause
	s.mu.Unlock()
	if p.on {
		return PauseCredential, fmt.Errorf("sending paused since %s: %s", p.since.UTC().Format(time.RFC3339), p.reason)
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
	j, queued := s.queued[k]
	switch {
	case queued && j.timer != nil && j.paced:
		return Waiting{Why: WaitPacing, Until: j.due, Attempt: j.attempt}, true
	case queued && j.timer != nil:
		return Waiting{Why: WaitRetry, Until: j.due, Attempt: j.attempt}, true
	case queued && s.stuckLocked():
		return Waiting{Why: WaitPaused, Attempt: j.attempt}, true
	case queued:
		return Waiting{Why: WaitQueued, Attempt: j.attempt}, true
	case s.flying[k] > 0:
		return Waiting{Why: WaitInFlight}, true
	}
	return Waiting{}, false
}

// Client returns the current credentials.
func (s *Sender) Client() *Client { return s.client.Load() }

// Enqueue asks for one push to the device. It never blocks; a device that
// is already waiting to be pushed is not added twice, and one pushed less
// than MinInterval ago waits for the rest of it.
func (s *Sender) Enqueue(k registry.Key) {
	s.mu.Lock()
	if _, ok := s.queued[k]; ok {
		s.mu.Unlock()
		return
	}
	now := s.opts.Now()
	j := &job{key: k, deadline: now.Add(s.opts.Expiration)}
	s.queued[k] = j
	if wait := s.paceLocked(k, now); wait > 0 && !s.stopping {
		j.paced = true
		s.requeueAfterLocked(j, wait)
		s.mu.Unlock()
		return
	}
	s.queue = append(s.queue, j)
	s.mu.Unlock()
	s.kick()
}

// paceLocked says how long a push to k must wait for MinInterval.
func (s *Sender) paceLocked(k registry.Key, now time.Time) time.Duration {
	if s.pushed == nil {
		return 0
	}
	last, ok := s.pushed[k]
	if !ok {
		last, ok = s.pushedBefore[k]
	}
	if !ok {
		return 0
	}
	return last.Add(s.opts.MinInterval).Sub(now)
}

// notePushedLocked remembers a push to k for pacing.
func (s *Sender) notePushedLocked(k registry.Key, now time.Time) {
	if s.pushed == nil {
		return
	}
	if now.Sub(s.pushedSince) >= s.opts.MinInterval {
		s.pushedBefore, s.pushed, s.pushedSince = s.pushed, make(map[registry.Key]time.Time, len(s.pushed)), now
	}
	s.pushed[k] = now
}

func (s *Sender) kick() {
	select {
	case s.kickc <- struct{}{}:
	default:
	}
}

// Depth reports queued (including those waiting for a retry) and
// in-flight pushes.
func (s *Sender) Depth() (queued, inFlight int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.flying {
		inFlight += n
	}
	return len(s.queued), inFlight
}

// logEveryMinute runs f with the sender's log at most once a minute for
// kind: problems that concern every push are said once, not once per push.
func (s *Sender) logEveryMinute(kind string, f func(logrus.FieldLogger)) {
	v, _ := s.lastLog.LoadOrStore(kind, new(atomic.Int64))
	if logging.EveryMinute(v.(*atomic.Int64)) {
		f(s.log)
	}
}
