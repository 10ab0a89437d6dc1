// Package apns sends the pushes: a bounded, de-duplicated queue in front of
// many concurrent HTTP/2 requests to Apple, with retries for what can
// succeed later and removal of registrations Apple says are dead.
//
// /notify only enqueues, so the Dovecot plugin never waits on Apple.
// Every push to a device is the same request, so a device that is
// already queued is not queued again: the queue holds at most one entry
// per registration whatever the event rate.
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
type Options struct {
	Concurrency int           // pushes in flight (default 1000)
	Expiration  time.Duration // apns-expiration = now + this (default 24h)
	Priority    int           // 0 = header not sent; else 5 or 10
	Remover     Remover
	Log         logrus.FieldLogger
	OnResult    func(Result) // optional, called for every attempt
	// Backoff bounds for retries; jitter spreads them.
	MinBackoff, MaxBackoff time.Duration
	Now                    func() time.Time
}

type job struct {
	key      registry.Key
	attempt  int
	deadline time.Time // expiration of the push; no retry past it
	timer    *time.Timer
	test     bool // PushNow: one attempt, reported as a test
}

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
	idle     *sync.Cond // signalled when a push in flight ends

	sem         chan struct{}
	lastAuthLog atomic.Int64 // unix seconds of the last 403 log line
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
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		l := logrus.New()
		l.SetLevel(logrus.PanicLevel)
		o.Log = l
	}
	s := &Sender{opts: o, log: o.Log, queued: make(map[registry.Key]*job), flying: make(map[registry.Key]int),
		kickc: make(chan struct{}, 1), sem: make(chan struct{}, o.Concurrency)}
	s.idle = sync.NewCond(&s.mu)
	s.client.Store(client)
	return s
}

// SetClient swaps the credentials; pushes already in flight finish with
// the old ones.
func (s *Sender) SetClient(c *Client) { s.client.Store(c) }

// Client returns the current credentials.
func (s *Sender) Client() *Client { return s.client.Load() }

// Enqueue asks for one push to the device. It never blocks; a device that
// is already waiting to be pushed is not added twice.
func (s *Sender) Enqueue(k registry.Key) {
	s.mu.Lock()
	if _, ok := s.queued[k]; ok {
		s.mu.Unlock()
		return
	}
	j := &job{key: k, deadline: s.opts.Now().Add(s.opts.Expiration)}
	s.queued[k] = j
	s.queue = append(s.queue, j)
	s.mu.Unlock()
	s.kick()
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
		j := s.next()
		if j == nil {
			<-s.sem
			select {
			case <-s.kickc:
				continue
			case <-ctx.Done():
				return
			}
		}
		go s.send(j)
	}
}

// next pops a job and marks it in flight; a new event for the same device
// from now on queues a new push, because this one may already be on its
// way and the device might sync before the new change.
func (s *Sender) next() *job {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping || len(s.queue) == 0 {
		return nil
	}
	j := s.queue[0]
	s.queue[0] = nil
	s.queue = s.queue[1:]
	delete(s.queued, j.key)
	s.flying[j.key]++
	return j
}

func (s *Sender) send(j *job) {
	defer func() { <-s.sem }()
	res := s.attempt(context.Background(), j)
	s.mu.Lock()
	if s.flying[j.key]--; s.flying[j.key] == 0 {
		delete(s.flying, j.key)
	}
	if res.Outcome == Retrying {
		s.scheduleRetryLocked(j)
	}
	s.idle.Broadcast()
	s.mu.Unlock()
}

// PushNow sends one push synchronously, without retries: for test-push,
// where the admin wants Apple's answer.
func (s *Sender) PushNow(ctx context.Context, k registry.Key) Result {
	j := &job{key: k, deadline: s.opts.Now().Add(s.opts.Expiration), test: true}
	return s.attempt(ctx, j)
}

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
	resp, err := c.Transport.PushWithContext(ctx, n)
	res := Result{Device: j.key, Attempt: j.attempt, Duration: time.Since(start), Test: j.test}
	if err != nil {
		res.Reason = transportReason(err)
		res.Outcome = Retrying
	} else {
		res.Status, res.Reason, res.ApnsID = resp.StatusCode, resp.Reason, resp.ApnsID
		res.Outcome = s.classify(j, resp)
		if c.DryRun && res.Outcome == Delivered {
			res.Outcome = DryRun // nothing reached Apple: not delivered
		}
	}
	switch {
	case res.Outcome == Retrying && j.test:
		res.Outcome = Failed // a test push is not retried; the reason says why it failed
	case res.Outcome == Retrying && !s.opts.Now().Add(s.opts.MinBackoff).Before(j.deadline):
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

func (s *Sender) classify(j *job, resp *apns2.Response) Outcome {
	switch {
	case resp.StatusCode == http.StatusOK:
		return Delivered
	case resp.StatusCode == http.StatusGone:
		// APNs gives the last time the token was valid, which apns2
		// truncates to seconds; round up so that a device registered
		// within that second still counts as registered before it.
		before := time.Time{}
		if !resp.Timestamp.IsZero() {
			before = resp.Timestamp.Add(time.Second - time.Nanosecond)
		}
		if s.opts.Remover != nil && s.opts.Remover.Remove(j.key, before) {
			return Removed
		}
		return Failed
	case resp.StatusCode == http.StatusBadRequest &&
		(resp.Reason == apns2.ReasonBadDeviceToken || resp.Reason == apns2.ReasonDeviceTokenNotForTopic):
		if s.opts.Remover != nil && s.opts.Remover.Remove(j.key, time.Time{}) {
			return Removed
		}
		return Failed
	case resp.StatusCode == http.StatusForbidden && resp.Reason == apns2.ReasonExpiredProviderToken:
		// apns2 makes a new JWT for the next request.
		return Retrying
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return Retrying
	default:
		return Failed
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
	case res.Status == http.StatusForbidden && res.Outcome == Failed:
		// Bad credentials fail every push; one line a minute says it.
		now := time.Now().Unix()
		last := s.lastAuthLog.Load()
		if now-last >= 60 && s.lastAuthLog.CompareAndSwap(last, now) {
			l.Error("APNs refused the push credentials (403); check the certificate or key, then reload with SIGHUP")
		}
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
	j.timer = time.AfterFunc(d, func() {
		s.mu.Lock()
		if cur, ok := s.queued[j.key]; !ok || cur != j || s.stopping {
			s.mu.Unlock()
			return
		}
		j.timer = nil
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
func (s *Sender) Drain(ctx context.Context) ([]registry.Key, error) {
	done := make(chan struct{})
	go func() {
		s.mu.Lock()
		for len(s.queue) > 0 || len(s.flying) > 0 {
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
