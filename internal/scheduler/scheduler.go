// Package scheduler debounces the mailbox changes that are not new mail.
//
// Flag changes, moves and deletions arrive in bursts (a client marking 100
// messages read sends 100 events). Each event only records "this device
// changed at time t"; a push goes out once the device has been quiet for
// longer than the delay, checked every check interval, so a burst costs
// one push, sent between delay and delay+interval after its last event
// (docs/protocol.md#push-later). New mail does not wait: it cancels the pending entry and is
// pushed at once, and that one push makes the device sync everything.
package scheduler

import (
	"context"
	"sync"
	"time"

	"github.com/xapsd/xapsd/internal/registry"
)

// Sender takes due pushes.
type Sender interface {
	Enqueue(registry.Key)
}

// Options configures a Scheduler.
type Options struct {
	Delay         time.Duration // quiet time before a push
	CheckInterval time.Duration // how often due entries are looked for
	Sender        Sender
	Now           func() time.Time
}

// Scheduler is safe for concurrent use.
type Scheduler struct {
	opts    Options
	mu      sync.Mutex
	pending map[registry.Key]time.Time // last event per device
}

// New returns a Scheduler; call Run to make it push.
func New(o Options) *Scheduler {
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Scheduler{opts: o, pending: make(map[registry.Key]time.Time)}
}

// Delay records a change for the device and postpones its push.
func (s *Scheduler) Delay(k registry.Key) {
	now := s.opts.Now()
	s.mu.Lock()
	s.pending[k] = now
	s.mu.Unlock()
}

// Cancel drops the device's pending push: the caller is pushing now.
func (s *Scheduler) Cancel(k registry.Key) {
	s.mu.Lock()
	delete(s.pending, k)
	s.mu.Unlock()
}

// Pending says whether the device waits for a delayed push, and when its
// last change was: the push goes once it has been quiet for longer than
// the delay, at the first check after that. For xapsd diagnose.
func (s *Scheduler) Pending(k registry.Key) (last time.Time, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	last, ok = s.pending[k]
	return last, ok
}

// Due is when a push delayed since last goes out at the latest.
func (s *Scheduler) Due(last time.Time) time.Time {
	return last.Add(s.opts.Delay + s.opts.CheckInterval)
}

// Len counts devices waiting for a delayed push.
func (s *Scheduler) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

// Run hands due pushes to the sender every interval until ctx ends.
func (s *Scheduler) Run(ctx context.Context) {
	t := time.NewTicker(s.opts.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Tick()
		}
	}
}

// Tick sends every entry quiet for strictly longer than the delay.
func (s *Scheduler) Tick() int {
	now := s.opts.Now()
	var due []registry.Key
	s.mu.Lock()
	for k, last := range s.pending {
		if now.Sub(last) > s.opts.Delay {
			due = append(due, k)
			delete(s.pending, k)
		}
	}
	s.mu.Unlock()
	for _, k := range due {
		s.opts.Sender.Enqueue(k)
	}
	return len(due)
}

// Flush hands every pending entry to the sender now, whatever its age:
// on shutdown a push a little early beats a push lost.
func (s *Scheduler) Flush() int {
	s.mu.Lock()
	due := make([]registry.Key, 0, len(s.pending))
	for k := range s.pending {
		due = append(due, k)
	}
	clear(s.pending)
	s.mu.Unlock()
	for _, k := range due {
		s.opts.Sender.Enqueue(k)
	}
	return len(due)
}
