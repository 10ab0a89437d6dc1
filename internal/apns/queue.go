package apns

import (
	"time"

	"github.com/xapsd/xapsd/internal/registry"
)

// job is one push to one device, from Enqueue to its last attempt.
type job struct {
	key      registry.Key
	attempt  int
	deadline time.Time // expiration of the push; no retry past it
	timer    *time.Timer
	due      time.Time // when timer makes it ready
	paced    bool      // timer waits for MinInterval, not for a retry
	probe    bool      // sent to see whether APNs still refuses the credential
	test     bool      // PushNow: one attempt, reported as a test
}

// pushQueue de-duplicates the pushes. It promises that a device has at
// most one push waiting, whatever the rate of its events, so the queue
// never holds more entries than there are registrations; that a device
// whose push is on its way can have one more waiting, because the device
// may sync before the change that came after it left; and that ready
// pushes leave in the order they became ready.
//
// A push waits either ready (in ready, oldest first) or for a timer (a
// retry, or MinInterval): both are in waiting, which is what makes a
// second event for the device a no-op. Once handed out it is in flying
// until its attempt ends.
type pushQueue struct {
	ready   []*job
	waiting map[registry.Key]*job
	flying  map[registry.Key]int // devices with a push in flight, and how many
	// stopped: Drain has run; nothing more is handed out.
	stopped bool
}

func newPushQueue() pushQueue {
	return pushQueue{waiting: make(map[registry.Key]*job), flying: make(map[registry.Key]int)}
}

// has reports whether a push to k waits, ready or for a timer.
func (q *pushQueue) has(k registry.Key) bool {
	_, ok := q.waiting[k]
	return ok
}

// get returns the device's waiting push.
func (q *pushQueue) get(k registry.Key) (*job, bool) {
	j, ok := q.waiting[k]
	return j, ok
}

// size counts the waiting pushes; readyLen those ready to go.
func (q *pushQueue) size() int     { return len(q.waiting) }
func (q *pushQueue) readyLen() int { return len(q.ready) }

// busy reports whether any push is on its way.
func (q *pushQueue) busy() bool { return len(q.flying) > 0 }

// halted reports whether Drain has stopped the queue.
func (q *pushQueue) halted() bool { return q.stopped }

// inFlight reports whether a push to k is on its way.
func (q *pushQueue) inFlight(k registry.Key) bool { return q.flying[k] > 0 }

// add makes j the device's waiting push; ready says whether it may go
// now or waits for its timer. (Once stopped, a ready push is still
// queued, and handed out no more.)
func (q *pushQueue) add(j *job, ready bool) {
	q.waiting[j.key] = j
	if ready {
		q.ready = append(q.ready, j)
	}
}

// release makes j, waiting for its timer, ready; false when j is no
// longer the device's waiting push, or the queue has stopped.
func (q *pushQueue) release(j *job) bool {
	if cur, ok := q.waiting[j.key]; !ok || cur != j || q.stopped {
		return false
	}
	q.ready = append(q.ready, j)
	return true
}

// releasePaced makes the pushes waiting for MinInterval ready now.
func (q *pushQueue) releasePaced() {
	for _, j := range q.waiting {
		if j.paced && j.timer != nil && j.timer.Stop() {
			j.timer, j.paced = nil, false
			q.ready = append(q.ready, j)
		}
	}
}

// take hands the oldest ready push out: it is in flight from now on.
func (q *pushQueue) take() *job {
	j := q.ready[0]
	q.ready[0] = nil
	q.ready = q.ready[1:]
	delete(q.waiting, j.key)
	q.flying[j.key]++
	return j
}

// landed ends a push's flight.
func (q *pushQueue) landed(k registry.Key) {
	if q.flying[k]--; q.flying[k] == 0 {
		delete(q.flying, k)
	}
}

// depth counts the waiting pushes (ready or for a timer) and those in
// flight.
func (q *pushQueue) depth() (waiting, inFlight int) {
	for _, n := range q.flying {
		inFlight += n
	}
	return len(q.waiting), inFlight
}

// stop hands nothing out any more and returns the devices whose push did
// not go: those waiting, and those in flight (Apple may not have answered
// them). Their timers are stopped.
func (q *pushQueue) stop() []registry.Key {
	q.stopped = true
	var left []registry.Key
	for k, j := range q.waiting {
		if j.timer != nil {
			j.timer.Stop()
		}
		left = append(left, k)
	}
	for k := range q.flying {
		if _, ok := q.waiting[k]; !ok {
			left = append(left, k)
		}
	}
	q.ready = nil
	return left
}
