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
