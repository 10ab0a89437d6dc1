package registry

import (
	"context"
	"errors"
	"time"
)

// A Store keeps the registrations durable: the files in the state folder
// (a journal beside a snapshot, internal/filestore), or a PostgreSQL
// database several daemons share (internal/pgstore). The registry holds
// every registration in memory, decides what changes, and hands each
// batch of changes to its store; the store never touches memory except
// through the Memory it is given. The registry calls Load first, then
// Commit and Expire one at a time from one goroutine, and Close last;
// the other methods may be called at any time.
type Store interface {
	// Load fills memory with every registration the store holds. An
	// error stops the start: the store holds something it must not
	// overwrite or cannot use (a file of a newer xapsd, files another
	// daemon holds, a database schema newer than this xapsd, a setting
	// that cannot work). A store that cannot be reached yet is not an
	// error: Load leaves memory empty, Health says why, and Follow
	// fills it once the store can be reached.
	Load(ctx context.Context, m *Memory) error

	// Follow keeps memory up to date with the changes made to the store
	// elsewhere, by the other daemons that share it, until Close: the
	// users another daemon changed (Memory.Reload), or everything
	// (Memory.ReplaceAll) after it could not follow for a while. It
	// reports no error: Health says whether it follows. A store that is
	// this daemon's alone returns at once. The registry calls it once,
	// after Load, on a goroutine of its own.
	Follow(m *Memory)

	// Shared reports whether other daemons change the store too. Memory
	// may then lag behind the store, so the store, not memory, applies
	// the device caps (memory's choice of the oldest could be wrong), and
	// Expire sweeps the store itself.
	Shared() bool

	// Commit makes changes durable, all or none, in their order, and
	// says what memory becomes. With an error none of them is stored and
	// memory stays as it is, with one exception: an error that wraps
	// ErrUnconfirmed leaves their fate unknown for now, and the store
	// tells memory through Follow's means once it knows. An error of a
	// store that cannot be reached wraps ErrUnavailable.
	Commit(ctx context.Context, changes []Change) (Committed, error)

	// Expire removes, durably, the registrations registered before
	// cutoff, and says how many it removed. old are the removals memory
	// finds: a store that is this daemon's alone commits exactly those;
	// a shared store sweeps itself instead (memory may not know what
	// another daemon refreshed), and does nothing (removed 0, no error)
	// while another daemon sweeps. Errors as for Commit.
	Expire(ctx context.Context, cutoff time.Time, old []Change) (c Committed, removed int, err error)

	// Exclusive runs work unless another daemon that shares the store
	// runs work of the same name now: then ran is false and work did
	// not run. err is work's error, or why the store could not tell
	// (wrapping ErrUnavailable). A store that is this daemon's alone
	// always runs work.
	Exclusive(ctx context.Context, name string, work func() error) (ran bool, err error)

	// Health says whether changes can be stored now, whether the store
	// follows the other daemons' changes, and what loading found
	// damaged.
	Health() Health

	// Close releases the store after the registry's last commit and
	// stops Follow. Its error says that something could not be written
	// or released at the end (the files' final snapshot); what was
	// committed before stays stored either way.
	Close() error
}

// Change is one change of a batch. A put (Del false) stores Registration
// in place of the one with the same Key; a removal (Del true) removes the
// registration of Key.
type Change struct {
	Registration
	Del bool
	// Before, on a removal, keeps a registration made at or after that
	// time (Apple's 410 rule). Memory checked it already; a shared store
	// checks it again, as another daemon may have stored a newer one.
	Before time.Time
	// KeepNewer, on a put (an import), keeps a stored copy registered
	// later. Memory checked it already; a shared store checks it again.
	KeepNewer bool
}

// Committed says what memory becomes after a commit.
type Committed struct {
	// Users, when not nil, holds every registration of each user the
	// changes touched, as the store now has them: a shared store, where
	// the caps and the other daemons' changes decide. Memory takes them
	// as they are. Nil: memory applies the changes as they were made.
	Users map[string][]Registration
}

// Health is what readiness checks and metrics need to know about the
// registry's store.
type Health struct {
	// WriteErr says why changes cannot be stored now: the last write or
	// commit failed, and no check since found the store taking them
	// again; or the store cannot be reached. Nil while changes are
	// stored.
	WriteErr error
	// FollowErr, for a shared store, says why this daemon does not hear
	// the changes other daemons commit (not connected, LISTEN lost); nil
	// while it does, and always for a store that is this daemon's alone.
	FollowErr error
	// Damage says what loading found damaged or lost (lines skipped, a
	// snapshot missing), one short line each; Damaged counts the
	// records and lines skipped. The registry started anyway.
	Damage  []string
	Damaged int
}

// ErrClosed is returned by changes after Close.
var ErrClosed = errors.New("registry closed")

// ErrFull is returned by Register for a new registration while the
// registry holds MaxRegistrations.
var ErrFull = errors.New("registry full")

// ErrUnavailable wraps the errors of a store that cannot be reached (a
// database that does not answer): the change was not stored (unless the
// error also wraps ErrUnconfirmed), and asking again later may work.
var ErrUnavailable = errors.New("registry database unavailable")

// ErrUnconfirmed is wrapped, with ErrUnavailable, by the error of a change
// the store did not confirm in time although it may have stored it (a
// synchronous standby that does not answer, a connection lost at the
// commit). The store follows the users concerned until it knows: memory
// then holds what the store holds, whichever it was.
var ErrUnconfirmed = errors.New("the database did not confirm the change in time; it may still be stored")

// Memory is a store's way into the registry's memory. It changes memory
// only through the registry's own rules, so a store never touches the
// index itself.
type Memory struct{ r *Registry }

// Presize prepares memory for about n users before a load: growing it
// step by step would cost a good part of loading a million. For Load
// only, like Reset, Put, PutNewer and Delete: nothing else runs then.
func (m *Memory) Presize(n int) { m.r.idx.presize(n) }

// Reset empties memory, for a load that starts over.
func (m *Memory) Reset() { m.r.idx.reset() }

// Put stores g in place of a registration with its key (replaying a
// journal).
func (m *Memory) Put(g Registration) { m.r.idx.put(g, false) }

// PutNewer stores g unless memory has a copy registered later (loading a
// snapshot, or a database's rows, where an older xapsd may have stored
// one device under two spellings of its token).
func (m *Memory) PutNewer(g Registration) { m.r.idx.put(g, true) }

// Delete removes the registration of k (replaying a journal).
func (m *Memory) Delete(k Key) { m.r.idx.del(k) }

// Len is how many registrations memory holds.
func (m *Memory) Len() int {
	m.r.mu.RLock()
	defer m.r.mu.RUnlock()
	return m.r.idx.count
}

// ReplaceAll replaces memory with what fill puts (as PutNewer does), once
// fill returned nil. Memory is built beside the old one, so lookups go on
// meanwhile; no commit runs meanwhile, so what fill read is not older
// than what a commit applied. It returns how many registrations memory
// holds now.
func (m *Memory) ReplaceAll(fill func(put func(Registration)) error) (int, error) {
	r := m.r
	r.commitMu.Lock()
	defer r.commitMu.Unlock()
	fresh := newIndex()
	if err := fill(func(g Registration) { fresh.put(g, true) }); err != nil {
		return 0, err
	}
	r.mu.Lock()
	r.idx = fresh
	r.mu.Unlock()
	return fresh.count, nil
}

// Reload reads users with read and puts what it returns into memory in
// place of what memory held for them (a user without registrations is
// removed). No commit runs meanwhile, so what read returned is not older
// than what a commit applied.
func (m *Memory) Reload(ctx context.Context, users []string,
	read func(ctx context.Context, users []string) (map[string][]Registration, error)) error {
	r := m.r
	r.commitMu.Lock()
	defer r.commitMu.Unlock()
	state, err := read(ctx, users)
	if err != nil {
		return err
	}
	r.mu.Lock()
	for u, regs := range state {
		r.idx.replaceUser(u, regs)
	}
	r.mu.Unlock()
	return nil
}

// Copy returns every registration in memory, taken while no commit is
// under way. mark, when not nil, runs at that moment, for the store to
// note which of its commits the copy holds (the files' snapshot names the
// last journal record it covers). The mailbox lists are shared with
// memory and must not be changed.
func (m *Memory) Copy(mark func()) []Registration {
	r := m.r
	r.commitMu.Lock()
	defer r.commitMu.Unlock()
	r.mu.RLock()
	defer r.mu.RUnlock()
	if mark != nil {
		mark()
	}
	return r.idx.all()
}
