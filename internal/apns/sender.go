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
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sideshow/apns2"
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

// Run dispatches pushes until ctx is cancelled. A worker slot is taken
// before a job leaves the queue, so a job is always either queued or in
// flight, never held by the dispatcher, and Drain can account for it.
func (s *Sender) Run(ctx context.Context) {
	for {
		select {
		case s.sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		j, wait := s.next()
		if j == nil {
			<-s.sem
			var t *time.Timer
			var wake <-chan time.Time
			if wait > 0 {
				t = time.NewTimer(wait)
				wake = t.C
			}
			select {
			case <-s.kickc:
			case <-wake:
			case <-ctx.Done():
			}
			if t != nil {
				t.Stop()
			}
			if ctx.Err() != nil {
				return
			}
			continue
		}
		go s.send(j)
	}
}

// next pops a job and marks it in flight; a new event for the same device
// from now on queues a new push, because this one may already be on its
// way and the device might sync before the new change. While sending is
// paused it returns no job, or the one probe, and how long to wait.
func (s *Sender) next() (*job, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	waiting := len(s.queue)
	j, wait := s.nextLocked()
	if s.opts.looked != nil {
		s.opts.looked(waiting, j != nil)
	}
	return j, wait
}

func (s *Sender) nextLocked() (*job, time.Duration) {
	if s.stopping || len(s.queue) == 0 {
		return nil, 0
	}
	now := s.opts.Now()
	if until, err := s.client.Load().unreachable(); !until.IsZero() {
		s.unreachable = true
		s.idle.Broadcast() // Drain does not wait for a queue that cannot move
		s.logEveryMinute("unreachable", func(l logrus.FieldLogger) {
			l.WithError(err).WithField("queued", len(s.queued)).
				Errorf("cannot connect to APNs: sending paused, pushes are kept; next attempt in %s", time.Until(until).Round(time.Second))
		})
		return nil, max(time.Until(until), time.Millisecond) // a timer, even if until just passed
	}
	if s.unreachable {
		s.unreachable = false
		s.log.Info("connecting to APNs again: sending resumed")
	}
	probe := false
	if s.pause.on {
		if s.pause.probing {
			return nil, 0 // the probe's answer kicks
		}
		if wait := s.pause.probeAt.Sub(now); wait > 0 {
			return nil, wait
		}
		s.pause.probing, probe = true, true
	}
	j := s.queue[0]
	s.queue[0] = nil
	s.queue = s.queue[1:]
	delete(s.queued, j.key)
	s.flying[j.key]++
	j.probe = probe
	s.notePushedLocked(j.key, now)
	return j, 0
}

// stuckLocked says whether the queue cannot move now: sending is paused
// and no probe is on its way, or APNs cannot be reached.
func (s *Sender) stuckLocked() bool {
	if s.pause.on && !s.pause.probing {
		return true
	}
	until, _ := s.client.Load().unreachable()
	return !until.IsZero()
}

func (s *Sender) send(j *job) {
	defer func() { <-s.sem }()
	res := s.attempt(context.Background(), j)
	s.mu.Lock()
	if s.flying[j.key]--; s.flying[j.key] == 0 {
		delete(s.flying, j.key)
	}
	s.noteAnswerLocked(res)
	switch res.Outcome {
	case Retrying:
		s.scheduleRetryLocked(j)
	case Held:
		s.holdLocked(j)
	}
	// A held push is back in the queue: the dispatcher decides when it
	// may go.
	wake := res.Outcome == Held
	if j.probe {
		j.probe = false
		wake = s.probedLocked(res) || wake
	}
	s.idle.Broadcast()
	s.mu.Unlock()
	if wake {
		s.kick()
	}
}

// noteAnswerLocked adds an answer from APNs to the window that decides
// whether BadDeviceToken is common; those answers are added when they are
// classified.
func (s *Sender) noteAnswerLocked(res Result) {
	if res.Status != 0 && res.Outcome != Held && !badTokenReason(res.Reason) {
		s.addAnswerLocked(false)
	}
}

// probedLocked handles the probe's result, and says whether the
// dispatcher should look at the queue again.
func (s *Sender) probedLocked(res Result) bool {
	s.pause.probing = false
	switch {
	case !s.pause.on:
		return true
	case s.resumeLocked(res):
		return true
	case res.Reason == reasonExpiredUnsent:
		return true // never sent: the next push in the queue probes at once
	}
	// Still refused (the refusal moved probeAt on), or no answer.
	if !s.pause.probeAt.After(s.opts.Now()) {
		s.pause.probeAt = s.opts.Now().Add(s.opts.ProbeInterval)
	}
	return false
}

// resumeLocked ends the pause when APNs answered res without refusing the
// credential, and says whether it did.
func (s *Sender) resumeLocked(res Result) bool {
	if !s.pause.on || res.Status == 0 || res.Outcome == Held || res.refused {
		return false
	}
	s.pause.on, s.pause.reason, s.pause.probeAt = false, "", time.Time{}
	s.log.WithFields(logrus.Fields{"status": res.Status, "queued": len(s.queued)}).Info("APNs accepts pushes again: sending resumed")
	return true
}

// holdLocked puts a push that was not sent, or refused for the
// credential, back in the queue without counting the attempt.
func (s *Sender) holdLocked(j *job) {
	j.attempt--
	if _, ok := s.queued[j.key]; ok {
		return // a fresh push for the device is already queued
	}
	s.queued[j.key] = j
	if !s.stopping {
		s.queue = append(s.queue, j)
	}
}

// PushNow sends one push synchronously, without retries: for test-push,
// where the admin wants Apple's answer. It goes out even while sending
// is paused, and an answer that is not a refusal of the credential ends
// the pause.
func (s *Sender) PushNow(ctx context.Context, k registry.Key) Result {
	j := &job{key: k, deadline: s.opts.Now().Add(s.opts.Expiration), test: true}
	res := s.attempt(ctx, j)
	s.mu.Lock()
	s.noteAnswerLocked(res)
	resumed := s.resumeLocked(res)
	s.mu.Unlock()
	if resumed {
		s.kick()
	}
	return res
}

// reasonExpiredUnsent is the Result.Reason of a push that expired in the
// queue and was not sent.
const reasonExpiredUnsent = "expired while sending was paused"

// PushTimeout bounds one attempt, from sending to Apple's answer.
const PushTimeout = 30 * time.Second

// Payload is the body iOS Mail expects (docs/protocol.md#apns-payload), with the account id
// JSON-escaped.
func Payload(accountID string) []byte {
	id, _ := json.Marshal(accountID)
	b := make([]byte, 0, len(id)+24)
	b = append(b, `{"aps":{"account-id":`...)
	b = append(b, id...)
	return append(b, "}}"...)
}

func (s *Sender) attempt(ctx context.Context, j *job) Result {
	c := s.client.Load()
	j.attempt++
	if !s.opts.Now().Before(j.deadline) {
		// Kept past its expiration by a pause: Apple would drop it.
		res := Result{Device: j.key, Attempt: j.attempt, Outcome: Expired, Reason: reasonExpiredUnsent}
		s.report(res)
		return res
	}
	n := &apns2.Notification{
		DeviceToken: j.key.DeviceToken,
		Topic:       c.Topic,
		PushType:    apns2.PushTypeBackground,
		Expiration:  j.deadline,
		Priority:    s.opts.Priority,
		Payload:     Payload(j.key.AccountID),
	}
	// A slow answer must not hold a worker for ever; Apple answers in
	// milliseconds when it answers at all.
	ctx, cancel := context.WithTimeout(ctx, PushTimeout)
	defer cancel()
	start := time.Now()
	sent := s.opts.Now()
	resp, err := c.Transport.PushWithContext(ctx, n)
	res := Result{Device: j.key, Attempt: j.attempt, Duration: time.Since(start), Test: j.test}
	var ue *transport.UnreachableError
	switch {
	case errors.As(err, &ue), errors.Is(err, transport.ErrHeldBack):
		res.Reason = transportReason(err)
		res.Outcome = Held
	case err != nil:
		res.Reason = transportReason(err)
		res.Outcome = Retrying
	default:
		res.Status, res.Reason, res.ApnsID = resp.StatusCode, resp.Reason, resp.ApnsID
		res.Outcome = s.classify(c, j, resp, sent)
		if c.DryRun && res.Outcome == Delivered {
			res.Outcome = DryRun // nothing reached Apple: not delivered
		}
	}
	now := s.opts.Now()
	switch {
	case (res.Outcome == Retrying || res.Outcome == Held) && j.test:
		// A test push is tried once, neither retried nor queued; the
		// reason says why it failed.
		res.refused = res.Outcome == Held
		res.Outcome = Failed
	case res.Outcome == Retrying && !now.Add(s.opts.MinBackoff).Before(j.deadline):
		res.Outcome = Expired
	case res.Outcome == Held && !now.Before(j.deadline):
		res.Outcome = Expired
	}
	s.report(res)
	return res
}

// transportReason describes a failed request without its URL, which
// holds the whole device token.
func transportReason(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Op + " APNs: " + ue.Err.Error()
	}
	return err.Error()
}

func (s *Sender) classify(c *Client, j *job, resp *apns2.Response, sent time.Time) Outcome {
	switch {
	case resp.StatusCode == http.StatusOK:
		return Delivered
	case resp.StatusCode == http.StatusGone || resp.Reason == apns2.ReasonUnregistered || resp.Reason == apns2.ReasonExpiredToken:
		// The reason decides, whatever the status. APNs gives the last
		// time the token was valid, which apns2 truncates to seconds;
		// round up so that a device registered within that second still
		// counts as registered before it.
		before := time.Time{}
		if !resp.Timestamp.IsZero() {
			before = resp.Timestamp.Add(time.Second - time.Nanosecond)
		}
		if s.opts.Remover != nil && s.opts.Remover.Remove(j.key, before) {
			return Removed
		}
		return Failed
	case badTokenReason(resp.Reason):
		if s.keepBadToken(resp.Reason) {
			return Failed
		}
		if s.opts.Remover != nil && s.opts.Remover.Remove(j.key, time.Time{}) {
			return Removed
		}
		return Failed
	case resp.Reason == apns2.ReasonExpiredProviderToken:
		return s.expiredToken(c, sent)
	case credentialRefusal(resp.StatusCode, resp.Reason):
		s.pauseFor(c, resp.StatusCode, resp.Reason, s.opts.Now().Add(s.opts.ProbeInterval))
		return Held
	case resp.Reason == apns2.ReasonTooManyProviderTokenUpdates:
		s.logEveryMinute("token-updates", func(l logrus.FieldLogger) {
			l.Error("APNs refuses a provider token made too soon after the previous one (429 TooManyProviderTokenUpdates): " +
				"is the same .p8 key used by another program or another xapsd? Pushes are retried")
		})
		return Retrying
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return Retrying
	default:
		return Failed
	}
}

// badTokenReason: APNs says the device token is not valid, for this
// environment or for this topic.
func badTokenReason(r string) bool {
	return r == apns2.ReasonBadDeviceToken || r == apns2.ReasonDeviceTokenNotForTopic
}

// credentialRefusal: APNs refuses every push of this credential or this
// kind of request the same way, so sending more is pointless until the
// configuration changes. A 403 always concerns the credential;
// ExpiredProviderToken is handled on its own.
func credentialRefusal(status int, reason string) bool {
	if status == http.StatusForbidden {
		return true
	}
	switch reason {
	case apns2.ReasonBadTopic, apns2.ReasonMissingTopic, apns2.ReasonTopicDisallowed,
		apns2.ReasonBadPriority, "InvalidPushType":
		return true
	}
	return false
}

// refusalAdvice says what to do about a refusal.
func refusalAdvice(reason string) string {
	switch reason {
	case apns2.ReasonBadCertificate, apns2.ReasonBadCertificateEnvironment, apns2.ReasonForbidden:
		return "check the certificate: revoked, not a push certificate, or for the other APNs environment (apnsEndpoint)"
	case apns2.ReasonInvalidProviderToken, apns2.ReasonMissingProviderToken, "UnrelatedKeyIdInToken", "BadEnvironmentKeyIdInToken":
		return "check keyFileKeyId, keyFileTeamId and the .p8 key: revoked, or restricted to another environment or topic"
	case apns2.ReasonBadTopic, apns2.ReasonMissingTopic, apns2.ReasonTopicDisallowed:
		return "the credential may not push to its topic: check keyFileTopic, or the key's or certificate's topics"
	case apns2.ReasonBadPriority:
		return "APNs wants another priority for background pushes: set apnsPriority: 5"
	case "InvalidPushType":
		return "APNs no longer accepts the background push type for this topic"
	}
	return "check the push credential"
}

// pauseFor pauses sending because APNs refused c; probeAt is when one
// push may try again. An answer for credentials already replaced is
// ignored.
func (s *Sender) pauseFor(c *Client, status int, reason string, probeAt time.Time) {
	why := fmt.Sprintf("APNs refuses every push with %d %s; %s", status, reason, refusalAdvice(reason))
	s.pauseWith(c, why, probeAt)
}

func (s *Sender) pauseWith(c *Client, why string, probeAt time.Time) {
	s.mu.Lock()
	if c != s.client.Load() {
		s.mu.Unlock()
		return
	}
	if !s.pause.on {
		s.pause.since = s.opts.Now()
	}
	s.pause.on, s.pause.reason = true, why
	if probeAt.After(s.pause.probeAt) {
		s.pause.probeAt = probeAt
	}
	queued := len(s.queued)
	s.idle.Broadcast() // Drain does not wait for a queue that cannot move
	s.mu.Unlock()
	// Pushes waiting for a stream would be refused the same way.
	c.holdBack()
	s.logEveryMinute("pause", func(l logrus.FieldLogger) {
		l.WithField("queued", queued).Errorf("%s. Sending is paused and pushes are kept until they expire; "+
			"reload (SIGHUP) once fixed. One push is tried at %s", why, probeAt.UTC().Format(time.RFC3339))
	})
}

// expiredToken handles ExpiredProviderToken: the token is renewed at
// once, unless it was made less than TokenRenewInterval ago (APNs would
// refuse the new one); then sending pauses until it may be.
func (s *Sender) expiredToken(c *Client, sent time.Time) Outcome {
	s.logEveryMinute("expired-token", func(l logrus.FieldLogger) {
		l.Error("APNs says the provider token has expired (403 ExpiredProviderToken), although xapsd makes a new " +
			"one every 50 minutes: the host's clock is probably behind (check NTP, timedatectl). Making a new token")
	})
	if c.token == nil {
		s.pauseFor(c, http.StatusForbidden, apns2.ReasonExpiredProviderToken, s.opts.Now().Add(s.opts.ProbeInterval))
		return Held
	}
	fresh, next, err := c.token.renew(sent, s.opts.Now())
	switch {
	case err != nil:
		s.pauseWith(c, "cannot sign a new provider token: "+err.Error(), s.opts.Now().Add(s.opts.ProbeInterval))
		return Held
	case fresh:
		return Retrying
	}
	s.pauseWith(c, fmt.Sprintf("APNs refuses the provider token as expired (403 ExpiredProviderToken) and APNs allows a "+
		"new one only at %s, 20 minutes after the last was made: the host's clock is probably far behind (check NTP)", next.UTC().Format(time.RFC3339)), next)
	return Held
}

// keepBadToken adds a BadDeviceToken answer to the window and says
// whether the registration must be kept: when such answers are most of
// the recent ones, or the credential changed a short while ago, the
// configuration is wrong rather than the devices.
func (s *Sender) keepBadToken(reason string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addAnswerLocked(true)
	now := s.opts.Now()
	keep := now.Sub(s.changedAt) < s.opts.TrustAfterChange || 2*s.badCount > s.answerCount
	switch {
	case !keep:
		s.guardLogged = time.Time{}
	case s.guardLogged.IsZero() || now.Sub(s.guardLogged) >= time.Hour:
		s.guardLogged = now
		s.log.WithFields(logrus.Fields{"reason": reason, "recent": s.answerCount, "bad": s.badCount}).
			Errorf("APNs answers %s to most pushes, or just after the credential changed: the registrations are kept, "+
				"not deleted. Likely cause: the wrong APNs environment (apnsEndpoint: development, while iOS Mail "+
				"registers with production) or a credential for another environment or topic", reason)
	}
	return keep
}

func (s *Sender) addAnswerLocked(bad bool) {
	if s.answerCount == guardWindow {
		if s.answers[s.answerNext] {
			s.badCount--
		}
	} else {
		s.answerCount++
	}
	s.answers[s.answerNext] = bad
	if bad {
		s.badCount++
	}
	s.answerNext = (s.answerNext + 1) % guardWindow
}

// logEveryMinute runs f with the sender's log at most once a minute for
// kind: problems that concern every push are said once, not once per push.
func (s *Sender) logEveryMinute(kind string, f func(logrus.FieldLogger)) {
	v, _ := s.lastLog.LoadOrStore(kind, new(atomic.Int64))
	if logging.EveryMinute(v.(*atomic.Int64)) {
		f(s.log)
	}
}

func (s *Sender) report(res Result) {
	if s.opts.OnResult != nil {
		s.opts.OnResult(res)
	}
	fields := logrus.Fields{
		"token":   logging.Mask(s.log, res.Device.DeviceToken),
		"user":    res.Device.User,
		"outcome": res.Outcome,
		"status":  res.Status,
		"attempt": res.Attempt,
		"ms":      res.Duration.Milliseconds(),
	}
	if res.Reason != "" {
		fields["reason"] = res.Reason
	}
	l := s.log.WithFields(fields)
	switch {
	case res.Test:
		// Asked for by an admin: every one is logged, as a test.
		l = l.WithField("test", true)
		if res.Outcome == Failed || res.Outcome == Removed {
			l.Warn("test push not delivered")
		} else {
			l.Info("test push")
		}
	case res.Outcome == Held:
		// The pause says it once a minute; a line per push would flood.
		l.Debug("push held")
	case res.Outcome == Failed || res.Outcome == Expired:
		l.Warn("push failed")
	case res.Outcome == Retrying:
		l.Info("push will be retried")
	default:
		l.Info("push")
	}
}

// scheduleRetryLocked waits a jittered, growing delay and queues the job
// again. A new event for the device in the meantime is merged into it.
func (s *Sender) scheduleRetryLocked(j *job) {
	if s.stopping {
		if _, ok := s.queued[j.key]; !ok {
			s.queued[j.key] = j
		}
		return
	}
	if _, ok := s.queued[j.key]; ok {
		return // a fresh push for the device is already queued
	}
	d := s.backoff(j.attempt)
	if !s.opts.Now().Add(d).Before(j.deadline) {
		d = j.deadline.Sub(s.opts.Now()) / 2
	}
	s.queued[j.key] = j
	s.requeueAfterLocked(j, d)
}

// requeueAfterLocked puts j, already in queued, into the queue after d.
func (s *Sender) requeueAfterLocked(j *job, d time.Duration) {
	j.due = s.opts.Now().Add(d)
	j.timer = time.AfterFunc(d, func() {
		s.mu.Lock()
		if cur, ok := s.queued[j.key]; !ok || cur != j || s.stopping {
			s.mu.Unlock()
			return
		}
		j.timer, j.paced = nil, false
		s.queue = append(s.queue, j)
		s.mu.Unlock()
		s.kick()
	})
}

// backoff doubles per attempt up to MaxBackoff, then picks a random point
// in its upper half so that retries after an outage do not arrive at
// Apple all at once.
func (s *Sender) backoff(attempt int) time.Duration {
	d := s.opts.MinBackoff
	for i := 1; i < attempt && d < s.opts.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, s.opts.MaxBackoff)
	return d/2 + rand.N(d/2+1)
}

// ErrDrainTimeout is returned by Drain when ctx ended first.
var ErrDrainTimeout = errors.New("pushes still queued when the shutdown grace period ended")

// Drain sends what is queued and waits for pushes in flight, until the
// queue is empty or ctx ends. Run must still be running. It then stops
// the sender and returns the devices that did not get their push, so the
// caller can keep them for the next start: those queued or waiting for a
// retry, and, when ctx ended first, those whose push was still on its way
// (Apple may have taken it; a second wake-up costs the device nothing,
// a lost one costs the user their mail).
//
// Pushes waiting for MinInterval go now. A queue that cannot move because
// sending is paused is not waited for.
func (s *Sender) Drain(ctx context.Context) ([]registry.Key, error) {
	s.mu.Lock()
	for _, j := range s.queued {
		if j.paced && j.timer != nil && j.timer.Stop() {
			j.timer, j.paced = nil, false
			s.queue = append(s.queue, j)
		}
	}
	s.mu.Unlock()
	s.kick()
	done := make(chan struct{})
	go func() {
		s.mu.Lock()
		for (len(s.queue) > 0 && !s.stuckLocked()) || len(s.flying) > 0 {
			s.idle.Wait()
		}
		s.mu.Unlock()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ErrDrainTimeout
	}
	s.mu.Lock()
	s.stopping = true
	var left []registry.Key
	for k, j := range s.queued {
		if j.timer != nil {
			j.timer.Stop()
		}
		left = append(left, k)
	}
	for k := range s.flying {
		if _, ok := s.queued[k]; !ok {
			left = append(left, k)
		}
	}
	s.queue = nil
	s.idle.Broadcast()
	s.mu.Unlock()
	if err != nil {
		return left, fmt.Errorf("%w (%d left)", err, len(left))
	}
	return left, nil
}
