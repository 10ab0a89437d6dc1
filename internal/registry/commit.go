package registry

import (
	"context"
	"time"
)

// batch collects changes that become durable together, with one write and
// one fsync of the journal or one database transaction (group commit);
// every caller that added to it waits on done. They are applied to memory
// once stored.
type batch struct {
	changes []Change
	adds    int // registrations it adds (Registry.adding)
	done    chan struct{}
	err     error
}

func newBatch() *batch { return &batch{done: make(chan struct{})} }

func (b *batch) add(c Change) { b.changes = append(b.changes, c) }

func (b *batch) finish(err error) {
	b.err = err
	close(b.done)
}

// wait returns the batch's outcome, or ctx's error when ctx ends first.
// A batch that is already stored wins over a context that ended at the
// same moment: the caller must not report a stored registration as lost.
func (b *batch) wait(ctx context.Context) error {
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		select {
		case <-b.done:
			return b.err
		default:
			return ctx.Err()
		}
	}
}

func (r *Registry) kick() {
	select {
	case r.kickc <- struct{}{}:
	default:
	}
}

// run hands the store what queued up while its last commit ran:
// concurrent registrations share one fsync, or one transaction.
func (r *Registry) run() {
	defer close(r.donec)
	for {
		select {
		case <-r.kickc:
			r.flush()
		case <-r.stopc:
			r.flush() // what was queued before Close
			return
		}
	}
}

// takePending swaps in a new batch and returns the one that was pending,
// or nil when it holds nothing.
func (r *Registry) takePending() *batch {
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.pending
	if len(b.changes) == 0 {
		return nil
	}
	r.pending = newBatch()
	return b
}

// flush commits the pending batch, applies it to memory once the store
// has it and releases its waiters. A failed commit changes nothing in
// memory.
func (r *Registry) flush() {
	b := r.takePending()
	if b == nil {
		return
	}
	r.commitMu.Lock()
	start := time.Now()
	c, err := r.store.Commit(context.Background(), b.changes)
	if r.opts.OnSync != nil {
		r.opts.OnSync(len(b.changes), time.Since(start))
	}
	r.mu.Lock()
	if err == nil {
		r.applyLocked(b.changes, c)
	}
	r.adding -= b.adds
	r.mu.Unlock()
	r.commitMu.Unlock()
	b.finish(err)
}

// applyLocked makes committed changes in memory: the users' state the
// store returned, or else the changes as they were made. Caller holds mu.
func (r *Registry) applyLocked(changes []Change, c Committed) {
	if c.Users != nil {
		for u, regs := range c.Users {
			r.idx.replaceUser(u, regs)
		}
		return
	}
	for _, ch := range changes {
		r.idx.apply(ch)
	}
}
