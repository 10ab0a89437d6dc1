package apns

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/registry"
)

// look is what one look of the dispatcher at the queue found.
type look struct {
	job  *job
	wait time.Duration // without a job: when to look again (0: at the next kick)
	// unreachable: APNs cannot be reached before until, and waiting
	// pushes wait for it; reachable: the queue had pushes and APNs
	// could be reached.
	unreachable error
	until       time.Time
	reachable   bool
	waiting     int // pushes waiting, for the log
}

// dispatcher is Run's own state, touched by Run's goroutine only.
type dispatcher struct {
	// unreachable: the last look found APNs unreachable; the next that
	// finds it reachable says so.
	unreachable bool
}

// saw logs what a look says about APNs: that it cannot be reached (once
// a minute), and that it can again.
func (d *dispatcher) saw(s *Sender, l look) {
	switch {
	case l.unreachable != nil:
		d.unreachable = true
		s.logEveryMinute("unreachable", func(log logrus.FieldLogger) {
			log.WithError(l.unreachable).WithField("queued", l.waiting).
				Errorf("cannot connect to APNs: sending paused, pushes are kept; next attempt in %s", time.Until(l.until).Round(time.Second))
		})
	case l.reachable && d.unreachable:
		d.unreachable = false
		s.log.Info("connecting to APNs again: sending resumed")
	}
}

// Run dispatches pushes until ctx is cancelled. A worker slot is taken
// before a job leaves the queue, so a job is always either queued or in
// flight, never held by the dispatcher, and Drain can account for it.
func (s *Sender) Run(ctx context.Context) {
	var d dispatcher
	for {
		select {
		case s.sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		l := s.next()
		d.saw(s, l)
		if l.job != nil {
			go s.send(l.job)
			continue
		}
		<-s.sem
		var t *time.Timer
		var wake <-chan time.Time
		if l.wait > 0 {
			t = time.NewTimer(l.wait)
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
	}
}

// next hands out the oldest ready push and marks it in flight; a new
// event for the same device from now on queues a new push, because this
// one may already be on its way and the device might sync before the new
// change. While APNs cannot be reached, or refuses the credential, it
// hands out nothing (or, in a pause, the one probe) and says how long to
// wait.
func (s *Sender) next() look {
	s.mu.Lock()
	defer s.mu.Unlock()
	waiting := s.queue.readyLen()
	l := s.nextLocked()
	if s.opts.looked != nil {
		s.opts.looked(waiting, l.job != nil)
	}
	return l
}

func (s *Sender) nextLocked() look {
	if s.queue.halted() || s.queue.readyLen() == 0 {
		return look{}
	}
	if until, err := s.client.Load().unreachable(); !until.IsZero() {
		s.idle.Broadcast() // Drain does not wait for a queue that cannot move
		// A timer, even if until just passed.
		return look{wait: max(time.Until(until), time.Millisecond), unreachable: err, until: until, waiting: s.queue.size()}
	}
	now := s.opts.Now()
	ok, probe, wait := s.paused.admit(now)
	if !ok {
		return look{wait: wait, reachable: true}
	}
	j := s.queue.take()
	j.probe = probe
	s.pacing.pushed(j.key, now)
	return look{job: j, reachable: true}
}

// send makes one attempt for j on a worker slot, and settles what its
// answer means for the queue and the rules.
func (s *Sender) send(j *job) {
	defer func() { <-s.sem }()
	res, v := s.attempt(s.deadlines.context(), j)
	s.decide(context.Background(), &res, v)
	s.report(res)
	s.mu.Lock()
	s.queue.landed(j.key)
	s.noteAnswerLocked(res)
	switch res.Outcome {
	case Retrying:
		s.retryLocked(j)
	case Held:
		s.holdLocked(j)
	}
	// A held push is back in the queue: the dispatcher decides when it
	// may go.
	wake := res.Outcome == Held
	if j.probe {
		j.probe = false
		wake = s.probedLocked(res, v) || wake
	}
	s.idle.Broadcast()
	s.mu.Unlock()
	if wake {
		s.kick()
	}
}

// PushNow sends one push synchronously, without retries: for test-push,
// where the admin wants Apple's answer. It goes out even while sending
// is paused, and an answer that is not a refusal of the credential ends
// the pause.
func (s *Sender) PushNow(ctx context.Context, k registry.Key) Result {
	j := &job{key: k, deadline: s.opts.Now().Add(s.opts.Expiration), test: true}
	res, v := s.attempt(ctx, j)
	s.decide(ctx, &res, v)
	s.report(res)
	s.mu.Lock()
	s.noteAnswerLocked(res)
	resumed := s.resumeLocked(res, v)
	s.mu.Unlock()
	if resumed {
		s.kick()
	}
	return res
}

// noteAnswerLocked adds an answer from APNs to the guard's window; bad
// tokens were added when they were decided on.
func (s *Sender) noteAnswerLocked(res Result) {
	if res.Status != 0 && res.Outcome != Held && !badTokenReason(res.Reason) {
		s.guard.note(false)
	}
}

// probedLocked handles the probe's result, and says whether the
// dispatcher should look at the queue again.
func (s *Sender) probedLocked(res Result, v verdict) bool {
	s.paused.returned()
	switch {
	case !s.paused.active():
		return true
	case s.resumeLocked(res, v):
		return true
	case res.Reason == reasonExpiredUnsent:
		return true // never sent: the next push in the queue probes at once
	}
	// Still refused (the refusal moved the next probe on), or no answer.
	s.paused.later(s.opts.Now(), s.opts.ProbeInterval)
	return false
}

// resumeLocked ends the pause when APNs answered res without refusing the
// credential, and says whether it did.
func (s *Sender) resumeLocked(res Result, v verdict) bool {
	if !s.paused.answered(res.Status != 0 && res.Outcome != Held && !v.refusedTest) {
		return false
	}
	s.log.WithFields(logrus.Fields{"status": res.Status, "queued": s.queue.size()}).Info("APNs accepts pushes again: sending resumed")
	return true
}

// holdLocked puts a push that was not sent, or refused for the
// credential, back in the queue without counting the attempt.
func (s *Sender) holdLocked(j *job) {
	j.attempt--
	if s.queue.has(j.key) {
		return // a fresh push for the device is already queued
	}
	s.queue.add(j, !s.queue.halted())
}

// retryLocked waits a jittered, growing delay and queues the job again.
// A new event for the device in the meantime is merged into it.
func (s *Sender) retryLocked(j *job) {
	if s.queue.has(j.key) {
		return // a fresh push for the device is already queued
	}
	if s.queue.halted() {
		s.queue.add(j, false) // Drain returns it
		return
	}
	d := s.backoff(j.attempt)
	if !s.opts.Now().Add(d).Before(j.deadline) {
		d = j.deadline.Sub(s.opts.Now()) / 2
	}
	s.queue.add(j, false)
	s.readyAfterLocked(j, d)
}

// readyAfterLocked makes j, waiting in the queue, ready after d.
func (s *Sender) readyAfterLocked(j *job, d time.Duration) {
	j.due = s.opts.Now().Add(d)
	j.timer = time.AfterFunc(d, func() {
		s.mu.Lock()
		if !s.queue.release(j) {
			s.mu.Unlock()
			return
		}
		j.timer, j.paced = nil, false
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
	s.queue.releasePaced()
	s.mu.Unlock()
	s.kick()
	done := make(chan struct{})
	go func() {
		s.mu.Lock()
		for (s.queue.readyLen() > 0 && !s.stuckLocked()) || s.queue.busy() {
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
	left := s.queue.stop()
	s.idle.Broadcast()
	s.mu.Unlock()
	if err != nil {
		return left, fmt.Errorf("%w (%d left)", err, len(left))
	}
	return left, nil
}
