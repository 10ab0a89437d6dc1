package filestore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/atomicfile"
	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/statedir"
)

// Store is the registry's store in the files of the state folder: a
// journal of changes beside a snapshot.
//
// Every change is a numbered record. Records are appended to the current
// journal segment (statedir.Dir.Segment) by whoever commits, one batch at
// a time: everything that queued up while the previous fsync ran is
// written and synced together, so concurrent registrations share one
// disk sync. Each start opens a new segment, so a torn line can only be
// the last line of a segment, and is then ignored.
//
// Compaction writes the whole registry as a new snapshot (atomically,
// with the last sequence number it contains) and then deletes the
// segments it covers. A crash at any step leaves a snapshot plus segments
// whose records beyond the snapshot's number replay to the same state.
//
// A commit returns only once its records are synced; a failed write is
// cut off the segment again, so a refused registration is nowhere. The
// process holds an flock on every segment it knows and deletes no other.
type Store struct {
	dir  statedir.Dir
	path string // snapshot path (dir.Snapshot())
	log  logrus.FieldLogger
	now  func() time.Time
	// compactAfter, compactAfterBytes and checkEvery are Options'
	// RegistryCompactAfter, RegistryCompactAfterBytes and
	// RegistryCheckInterval.
	compactAfter      int
	compactAfterBytes int64
	checkEvery        time.Duration
	m                 *registry.Memory // set by Load

	// wmu is held by whoever writes the current segment: a commit, a
	// rotation, the checks of the housekeeping goroutine.
	wmu     sync.Mutex
	seg     *os.File
	segPath string
	segSize int64  // bytes of whole, synced records in seg
	seq     uint64 // the last sequence number handed out

	// written is the last sequence number whose record is synced.
	written atomic.Uint64

	segMu    sync.Mutex
	segments []segment // finished segments not yet covered by a snapshot

	lastErr      atomic.Pointer[error]
	sinceCompact atomic.Int64 // records since the last compaction started
	bytesSince   atomic.Int64 // journal bytes since then
	snapSize     atomic.Int64 // bytes of the last snapshot written
	compacting   atomic.Bool

	// damage found while loading; written by Load only.
	damage       []string
	damagedCount int

	// appleCerts is the old daemon's certificate store, when the file
	// loaded at start still had one (docs/protocol.md#legacy-applecerts).
	appleCerts json.RawMessage

	lock *os.File // flock held while open; replaced when deleted (checkLock)

	// What checkFiles last reported; under wmu.
	goneReported string
	lockReported bool

	stopc    chan struct{}
	donec    chan struct{}
	compactW sync.WaitGroup
}

// New is the store of the files in o.Dir. It reads and writes nothing
// until the registry loads it (registry.Open).
func New(o Options) *Store {
	o.setDefaults()
	return &Store{dir: o.Dir, path: o.Dir.Snapshot(), log: o.Log, now: o.Now, compactAfter: o.RegistryCompactAfter,
		compactAfterBytes: o.RegistryCompactAfterBytes, checkEvery: o.RegistryCheckInterval,
		stopc: make(chan struct{}), donec: make(chan struct{})}
}

// LegacyAppleCerts returns the "AppleCerts" object of an old xapsd
// database.json loaded at start, or nil. The migration keeps it only in
// the backup, so the caller imports it at this start.
func (j *Store) LegacyAppleCerts() json.RawMessage { return j.appleCerts }

// noteDamage records what loading found damaged or lost, for Health.
func (j *Store) noteDamage(n int, note string) {
	j.damagedCount += n
	if len(j.damage) < 20 {
		j.damage = append(j.damage, note)
	}
}

// Health reports the damage found at load and the last write's error.
func (j *Store) Health() registry.Health {
	h := registry.Health{Damage: j.damage, Damaged: j.damagedCount}
	if p := j.lastErr.Load(); p != nil {
		h.WriteErr = *p
	}
	return h
}

// Shared is false: the files are this daemon's alone.
func (j *Store) Shared() bool { return false }

// Follow returns at once: nobody else changes the files.
func (j *Store) Follow(*registry.Memory) {}

// Exclusive runs work: the files are this daemon's alone.
func (j *Store) Exclusive(_ context.Context, _ string, work func() error) (bool, error) {
	return true, work()
}

// Expire journals the removals memory found like any other change.
func (j *Store) Expire(ctx context.Context, _ time.Time, old []registry.Change) (registry.Committed, int, error) {
	c, err := j.Commit(ctx, old)
	if err != nil {
		return c, 0, err
	}
	return c, len(old), nil
}

// Load reads the snapshot (or the old daemon's database.json, or
// nothing) and replays the journal into memory, then starts a new
// segment and the housekeeping goroutine.
func (j *Store) Load(_ context.Context, m *registry.Memory) error {
	j.m = m
	dir, path := j.dir, j.path
	if err := dir.Make(j.log); err != nil {
		return err
	}
	// Two daemons appending to one journal would corrupt it; the kernel
	// drops the lock when the process dies, even by SIGKILL.
	// The lock file stays after a stop: if it is there, xapsd ran here
	// before, and a missing snapshot is a loss, not a new install.
	_, statErr := os.Lstat(dir.Lock())
	ranBefore := statErr == nil
	lock, err := statedir.OpenFile(dir.Lock(), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open lock of registry %s: %w", path, err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return fmt.Errorf("registry %s is in use by another xapsd: %w", path, err)
	}
	j.lock = lock
	ok := false
	var segs []segment
	defer func() {
		if !ok {
			lock.Close()
			closeSegments(segs)
		}
	}()
	// Before anything is read or written: a segment another process
	// holds means a daemon runs on this registry although the lock file
	// did not say so (someone deleted it).
	segs, err = j.lockSegments()
	if err != nil {
		return err
	}
	now := j.now()
	skipped := 0
	load := func(rec record) {
		if rec.User == "" || rec.AccountID == "" || rec.DeviceToken == "" {
			skipped++
			return
		}
		if rec.RegistrationTime.IsZero() {
			// The old daemon wrote entries without a time that never
			// expired; count them from now so they expire if unused.
			rec.RegistrationTime = now
		}
		m.PutNewer(rec.registration())
	}
	snap, data, exists, err := j.loadSnapshot(load)
	if err != nil {
		return fmt.Errorf("load registry %s: %w", path, err)
	}
	if skipped > 0 {
		j.log.WithFields(map[string]any{"file": path, "skipped": skipped}).Warn("skipped registrations without user, account id or device token")
	}
	if snap.BadEntries > 0 {
		j.log.WithFields(map[string]any{"file": path, "skipped": snap.BadEntries}).Error("skipped entries of the old database that do not have the right types")
		j.noteDamage(snap.BadEntries, fmt.Sprintf("%s: %d entries of the old database skipped (wrong types)", filepath.Base(path), snap.BadEntries))
	}
	j.seq = snap.Seq
	if (len(segs) > 0 || ranBefore) && (!exists || snap.Empty) {
		j.reportLostSnapshot(segs, exists)
	}
	if snap.Seq > seqLimit {
		// Damage, not a real number: replaying every segment from the
		// start gives the same state, only slower.
		j.log.WithFields(map[string]any{"file": path, "seq": snap.Seq}).Error("the snapshot's sequence number is impossible; replaying the whole journal")
		j.noteDamage(1, fmt.Sprintf("%s: impossible sequence number %d in the header", path, snap.Seq))
		j.seq = 0
	}
	rp := &replayer{log: j.log, apply: func(rec record) {
		if rec.Op == opDel {
			m.Delete(registry.Key{User: rec.User, AccountID: rec.AccountID, DeviceToken: rec.DeviceToken})
		} else {
			m.Put(rec.registration())
		}
	}, last: j.seq, noStart: !exists || snap.Empty}
	for _, s := range segs {
		rp.segStart, _ = dir.SegmentStart(s.path)
		if err := j.replay(s.path, rp); err != nil {
			return err
		}
	}
	rp.finish()
	if rp.damaged > 0 {
		j.noteDamage(rp.damaged, fmt.Sprintf("%d journal records with sequence numbers out of order or below their segment's skipped (%s)", rp.damaged, strings.Join(rp.where, ", ")))
	}
	if rp.gaps > 0 {
		j.log.WithFields(map[string]any{"file": path, "gaps": rp.gaps, "missing": rp.missing}).
			Warn("the journal's sequence numbers skip some numbers; writes that failed (a full disk) leave such gaps, and nothing acknowledged was in them")
	}
	j.seq = max(j.seq, rp.last, snap.Seq)
	if j.seq > seqLimit {
		j.seq = rp.last
	}
	j.written.Store(j.seq)

	j.appleCerts = snap.AppleCerts
	switch {
	case snap.salvaged != nil:
		// Write what was salvaged as a clean snapshot, so the next start
		// does not salvage again; the damaged copy keeps the rest.
		if j.keepDamaged(data, snap, now) {
			if err := j.writeSnapshot(); err != nil {
				j.log.WithError(err).Error("cannot rewrite the salvaged registry; the next start salvages it again")
			}
		}
	case snap.Legacy:
		backup := dir.LegacyBackup(now)
		if err := atomicfile.WriteFile(backup, data, 0o600); err != nil {
			return fmt.Errorf("back up old registry %s: %w", path, err)
		}
		if err := j.writeSnapshot(); err != nil {
			return err
		}
		j.log.WithFields(map[string]any{"file": path, "backup": backup, "registrations": m.Len()}).
			Info("migrated the old xapsd database to the journaled format")
	case !exists:
		// Write the empty snapshot now: a folder we cannot write to
		// should stop the start, not the first registration.
		if err := j.writeSnapshot(); err != nil {
			return err
		}
	}
	j.segments = segs
	if err := j.openSegment(); err != nil {
		return err
	}
	// A full disk must show in /readyz from the start, not only after the
	// first registration fails.
	if err := j.probe(); err != nil {
		err = fmt.Errorf("write registry journal: %w", err)
		j.lastErr.Store(&err)
		j.log.WithError(err).Error("the registry folder cannot be written; registrations are refused until it can")
	}
	ok = true
	go j.housekeeping()
	if len(j.segments) > 0 {
		j.compactAsync()
	}
	return nil
}

// loadSnapshot feeds the database file's registrations to load. Our own
// layout streams; anything else (the old daemon's file, a hand-edited
// one) is read whole and returned in data, for the migration's backup.
// A file that does not parse is salvaged line by line (snap.salvaged);
// only one written by a newer xapsd is an error.
func (j *Store) loadSnapshot(load func(record)) (snap *snapshot, data []byte, exists bool, err error) {
	f, err := statedir.OpenFile(j.path, os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return &snapshot{}, nil, false, nil
	}
	if err != nil {
		return nil, nil, false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, false, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		if err := f.Chmod(0o600); err != nil {
			return nil, nil, false, fmt.Errorf("make registry %s private: %w", j.path, err)
		}
	}
	if st.Size() > 0 {
		j.snapSize.Store(st.Size())
		// A million registrations make a map this large; growing it
		// step by step would cost a good part of the load. Lines are
		// about 200 bytes.
		j.m.Presize(int(st.Size() / 200))
	}
	seq, ok, err := streamSnapshot(f, load)
	if err != nil {
		return nil, nil, true, err
	}
	if ok {
		return &snapshot{Seq: seq}, nil, true, nil
	}
	// Start over with the general reader.
	j.m.Reset()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, nil, true, err
	}
	if data, err = io.ReadAll(f); err != nil {
		return nil, nil, true, err
	}
	snap, err = decodeSnapshot(data)
	if errors.Is(err, errNewerFormat) {
		return nil, nil, true, err
	}
	if err != nil {
		j.m.Reset()
		sv := salvageSnapshot(data, load)
		return &snapshot{Seq: sv.seq, salvaged: &sv, decodeErr: err}, data, true, nil
	}
	for _, rec := range snap.Records {
		load(rec)
	}
	return snap, data, true, nil
}

// keepDamaged puts the damaged snapshot beside the registry, says what was
// kept and what not, and reports whether the copy is safe on disk (only
// then may the snapshot be rewritten).
func (j *Store) keepDamaged(data []byte, snap *snapshot, now time.Time) bool {
	sv := snap.salvaged
	copyPath := j.dir.Damaged(now)
	kept := true
	if err := atomicfile.WriteFile(copyPath, data, 0o600); err != nil {
		j.log.WithError(err).WithField("file", copyPath).Error("cannot keep a copy of the damaged registry; it stays as it is until the next snapshot succeeds")
		copyPath, kept = "", false
	}
	lines := make([]string, len(sv.badLines))
	for i, n := range sv.badLines {
		lines[i] = strconv.Itoa(n)
	}
	what := fmt.Sprintf("%d damaged lines skipped", sv.bad)
	if len(lines) > 0 {
		what += " (lines " + strings.Join(lines, ", ")
		if sv.bad > len(lines) {
			what += ", …"
		}
		what += ")"
	}
	if sv.noEnd {
		what += "; the file ends early"
	}
	if sv.seq == 0 {
		what += "; header damaged, the whole journal replayed"
	}
	j.log.WithError(snap.decodeErr).WithFields(map[string]any{"file": j.path, "kept": sv.kept, "skipped": sv.bad,
		"lines": strings.Join(lines, ","), "damaged_copy": copyPath}).
		Error("the registry snapshot is damaged: kept every registration that could be read, skipped the rest; devices of the skipped ones register again when their Mail app next connects")
	n := sv.bad
	if sv.noEnd {
		n++
	}
	j.noteDamage(max(n, 1), fmt.Sprintf("%s was damaged: %d registrations kept, %s; damaged file kept as %s",
		filepath.Base(j.path), sv.kept, what, filepath.Base(copyPath)))
	return kept
}

// reportLostSnapshot says what a missing or empty snapshot lost: the
// records before the first journal segment, which only it held.
func (j *Store) reportLostSnapshot(segs []segment, exists bool) {
	state := "empty (0 bytes, null or {})"
	if !exists {
		state = "missing"
	}
	if len(segs) == 0 {
		j.log.WithField("file", j.path).Error("the registry snapshot is " + state + " although xapsd ran here before (its lock file is there) " +
			"and there is no journal: every registration it held is lost; devices register again when their Mail app next connects")
		j.noteDamage(1, fmt.Sprintf("%s is %s and there is no journal: every registration is lost", filepath.Base(j.path), state))
		return
	}
	first, _ := j.dir.SegmentStart(segs[0].path)
	l := j.log.WithFields(map[string]any{"file": j.path, "segments": len(segs), "first_record": first})
	if first <= 1 {
		l.Warn("the registry snapshot is " + state + ", but the journal starts at its first record: nothing is lost")
		return
	}
	l.Error("the registry snapshot is " + state + " although journal segments exist: the registrations it held " +
		"(changes before the journal's first record) are lost, those in the journal are kept; lost devices register again when their Mail app next connects")
	j.noteDamage(1, fmt.Sprintf("%s is %s: registrations made before journal record %d are lost", filepath.Base(j.path), state, first))
}

// segment is a finished journal segment this process wrote, or found at
// start and replayed. f stays open with an exclusive flock until the
// segment is deleted: a second xapsd that got past a deleted lock file
// sees the lock and stops before it touches the segment, and this
// process only ever deletes segments it holds.
type segment struct {
	path string
	f    *os.File
}

func closeSegments(segs []segment) {
	for _, s := range segs {
		s.f.Close()
	}
}

// lockSegments lists the journal's segments in order and locks each.
func (j *Store) lockSegments() ([]segment, error) {
	paths, err := j.dir.Segments()
	if err != nil {
		return nil, err
	}
	var segs []segment
	for _, p := range paths {
		f, err := statedir.OpenFile(p, os.O_RDONLY, 0)
		if errors.Is(err, fs.ErrNotExist) {
			continue // compacted away by whoever held it
		}
		if err == nil {
			err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
			if errors.Is(err, syscall.EWOULDBLOCK) {
				f.Close()
				closeSegments(segs)
				return nil, fmt.Errorf("registry %s is in use by another xapsd: its journal segment %s is locked (was %s deleted?)", j.path, p, j.dir.Lock())
			}
		}
		if err != nil {
			if f != nil {
				f.Close()
			}
			closeSegments(segs)
			return nil, fmt.Errorf("open journal %s: %w", p, err)
		}
		segs = append(segs, segment{path: p, f: f})
	}
	return segs, nil
}

// replay reads one segment and hands its records to rp in file order.
func (j *Store) replay(path string, rp *replayer) error {
	f, err := statedir.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("open journal %s: %w", path, err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<20)
	for lineNo := 1; ; lineNo++ {
		line, err := br.ReadBytes('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read journal %s: %w", path, err)
		}
		complete := len(line) > 0 && line[len(line)-1] == '\n'
		if len(bytes.TrimSpace(line)) > 0 {
			rec, derr := decodeJournalLine(bytes.TrimSpace(line))
			switch {
			case derr != nil && !complete:
				// A write cut short by a crash: it was never
				// acknowledged, so dropping it loses nothing.
				j.log.WithField("file", path).Warn("ignoring a torn last journal line")
			case derr != nil:
				j.log.WithFields(map[string]any{"file": path, "line": lineNo}).WithError(derr).Error("skipping a corrupt journal line")
				j.noteDamage(1, fmt.Sprintf("%s:%d: corrupt journal line skipped", filepath.Base(path), lineNo))
			default:
				rp.feed(rec, fmt.Sprintf("%s:%d", filepath.Base(path), lineNo))
			}
		}
		if err != nil {
			return nil
		}
	}
}

// openSegment starts a segment named after the first sequence number it
// can hold: one past the last record written. Records queued meanwhile
// have higher numbers, but they are not written yet, so every record a
// segment holds is at or above its name, and replay can tell a damaged
// number from one a snapshot covers.
func (j *Store) openSegment() error {
	next := j.written.Load() + 1
	p := j.dir.Segment(next, time.Now().UnixNano())
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("create journal %s: %w", p, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return fmt.Errorf("lock journal %s: %w", p, err)
	}
	if err := atomicfile.SyncDir(j.dir.Folder()); err != nil {
		f.Close()
		return fmt.Errorf("sync folder of journal %s: %w", p, err)
	}
	j.seg, j.segPath, j.segSize = f, p, 0
	return nil
}

// rotate finishes the current segment and starts a new one. It returns
// the finished segments, which a snapshot taken after this call covers.
// Caller holds wmu.
func (j *Store) rotate() []segment {
	j.finishSegment()
	j.segMu.Lock()
	done := j.segments
	j.segments = nil
	j.segMu.Unlock()
	if err := j.openSegment(); err != nil {
		j.log.WithError(err).Error("cannot start a new journal segment; will retry with the next write")
	}
	return done
}

// housekeeping checks, every checkEvery until Close, whether a failed
// disk takes writes again and whether state files were deleted.
func (j *Store) housekeeping() {
	defer close(j.donec)
	if j.checkEvery <= 0 {
		<-j.stopc
		return
	}
	tick := time.NewTicker(j.checkEvery)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			j.wmu.Lock()
			j.retryProbe()
			j.checkFiles()
			j.wmu.Unlock()
		case <-j.stopc:
			return
		}
	}
}

// checkFiles notices state files deleted or replaced under the running
// daemon (an admin's rm, a cleanup script). What they held is in memory,
// so a new snapshot restores it; without one, the next kill -9 would lose
// every registration acknowledged since. Caller holds wmu.
func (j *Store) checkFiles() {
	dir := j.dir.Folder()
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			j.log.WithError(err).Error("the registry folder was deleted and cannot be made again")
		}
	}
	var gone []string
	if _, err := os.Lstat(j.path); errors.Is(err, fs.ErrNotExist) {
		gone = append(gone, filepath.Base(j.path))
	}
	unlinked := func(f *os.File) bool {
		var st syscall.Stat_t
		return syscall.Fstat(int(f.Fd()), &st) == nil && st.Nlink == 0
	}
	if j.seg != nil && unlinked(j.seg) {
		gone = append(gone, filepath.Base(j.segPath))
	}
	j.segMu.Lock()
	for _, sg := range j.segments {
		if unlinked(sg.f) {
			gone = append(gone, filepath.Base(sg.path))
		}
	}
	j.segMu.Unlock()
	if report := strings.Join(gone, ", "); report != j.goneReported {
		j.goneReported = report
		if report != "" {
			j.log.WithField("files", report).Warn("registry files were deleted under the running xapsd; writing a new snapshot from memory")
		}
	}
	if len(gone) > 0 {
		j.compactAsync()
	}
	j.checkLock()
}

// checkLock makes a new lock file when someone deleted or replaced ours:
// without it, a second xapsd started on this registry would find no lock.
func (j *Store) checkLock() {
	var held, named syscall.Stat_t
	if syscall.Fstat(int(j.lock.Fd()), &held) == nil && syscall.Stat(j.dir.Lock(), &named) == nil &&
		held.Dev == named.Dev && held.Ino == named.Ino {
		return
	}
	f, err := statedir.OpenFile(j.dir.Lock(), os.O_RDWR|os.O_CREATE, 0o600)
	if err == nil {
		if err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
		}
	}
	if err != nil {
		if !j.lockReported {
			j.lockReported = true
			j.log.WithError(err).Error("the registry's lock file was deleted and cannot be taken again; is a second xapsd starting on this registry?")
		}
		return
	}
	j.lock.Close()
	j.lock = f
	j.lockReported = false
	j.log.Warn("the registry's lock file was deleted under the running xapsd; made a new one")
}

// retryProbe clears a write error once the disk takes writes again, so
// that /readyz recovers without waiting for the next registration.
func (j *Store) retryProbe() {
	if j.lastErr.Load() == nil {
		return
	}
	if err := j.probe(); err == nil {
		j.lastErr.Store(nil)
		j.log.Info("the registry can be written again")
	}
}

// probeLines are written and taken back to see whether the disk has
// room: a block, more than one small record needs. Blank lines, so that
// replay skips them should a crash leave them behind.
var probeLines = bytes.Repeat([]byte{'\n'}, 4096)

// probe writes, syncs and truncates away probeLines at the end of the
// segment. Caller holds wmu (or is Load).
func (j *Store) probe() error {
	if j.seg == nil {
		if err := j.openSegment(); err != nil {
			return err
		}
	}
	err := j.append(probeLines)
	if terr := j.truncate(); terr != nil {
		j.finishSegment()
		if err == nil {
			err = terr
		}
	}
	return err
}

// Commit writes the changes as numbered records and syncs them. A
// failed write stores none of them (write cuts it off again); their
// numbers are not handed out again, so the journal shows a gap there.
func (j *Store) Commit(_ context.Context, changes []registry.Change) (registry.Committed, error) {
	j.wmu.Lock()
	defer j.wmu.Unlock()
	var lines []byte
	for _, c := range changes {
		j.seq++
		lines = append(lines, mustMarshal(journalRecord(j.seq, c))...)
		lines = append(lines, '\n')
	}
	if err := j.write(lines); err != nil {
		err = fmt.Errorf("write registry journal: %w", err)
		j.log.WithError(err).Error("registrations could not be made durable; they were refused")
		j.lastErr.Store(&err)
		return registry.Committed{}, err
	}
	j.lastErr.Store(nil)
	j.written.Store(j.seq)
	records := j.sinceCompact.Add(int64(len(changes)))
	size := j.bytesSince.Add(int64(len(lines)))
	if (j.compactAfter > 0 && records >= int64(j.compactAfter)) ||
		(j.compactAfterBytes > 0 && size >= max(j.compactAfterBytes, j.snapSize.Load())) {
		j.compactAsync()
	}
	return registry.Committed{}, nil
}

// write appends whole records to the current segment and syncs them. On
// failure the segment is cut back to its last synced record and used
// again for the next write: a full disk leaves neither a partial line
// nor a new empty segment per refused registration.
func (j *Store) write(buf []byte) error {
	if j.seg == nil {
		if err := j.openSegment(); err != nil {
			return err
		}
	}
	if err := j.append(buf); err != nil {
		if terr := j.truncate(); terr != nil {
			// The segment may now end in anything: finish it, so the
			// garbage can only be its torn last line, and start another
			// with the next write.
			j.log.WithError(terr).WithField("file", j.segPath).Warn("cannot cut a failed write off the journal segment; starting a new one")
			j.finishSegment()
		}
		return err
	}
	j.segSize += int64(len(buf))
	return nil
}

func (j *Store) append(buf []byte) error {
	if _, err := j.seg.Write(buf); err != nil {
		return err
	}
	return j.seg.Sync()
}

// truncate cuts the segment back to its synced records.
func (j *Store) truncate() error {
	if err := j.seg.Truncate(j.segSize); err != nil {
		return err
	}
	return j.seg.Sync()
}

// compactAsync starts a compaction unless one is running.
func (j *Store) compactAsync() {
	if !j.compacting.CompareAndSwap(false, true) {
		return
	}
	j.compactW.Add(1)
	go func() {
		defer j.compactW.Done()
		defer j.compacting.Store(false)
		if err := j.compact(); err != nil {
			j.log.WithError(err).Error("registry compaction failed; the journal keeps growing until it succeeds")
		}
	}()
}

// compact starts a fresh segment, writes a snapshot that covers every
// finished segment, and deletes them.
func (j *Store) compact() error {
	select {
	case <-j.stopc:
		return nil // Close writes the last snapshot
	default:
	}
	j.wmu.Lock()
	done := j.rotate()
	j.wmu.Unlock()
	j.sinceCompact.Store(0)
	j.bytesSince.Store(0)
	if err := j.writeSnapshot(); err != nil {
		// Keep the segments: they still hold the only copy. Hand them
		// back so the next compaction covers them.
		j.requeue(done)
		return err
	}
	j.removeSegments(done)
	return nil
}

// requeue hands segments back after a failed compaction: they still hold
// the only copy of their records, and the next compaction covers them.
func (j *Store) requeue(segs []segment) {
	j.segMu.Lock()
	j.segments = append(segs, j.segments...)
	j.segMu.Unlock()
}

// removeSegments deletes segments a snapshot covers. Each is one this
// process holds (see segment).
func (j *Store) removeSegments(segs []segment) {
	for _, s := range segs {
		if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			j.log.WithError(err).WithField("file", s.path).Warn("cannot remove a compacted journal segment")
		}
		s.f.Close()
	}
	if err := atomicfile.SyncDir(j.dir.Folder()); err != nil {
		j.log.WithError(err).Warn("cannot sync the registry folder")
	}
}

// writeSnapshot writes the whole registry, with the sequence number of
// the last record the copy of memory holds.
func (j *Store) writeSnapshot() error {
	var seq uint64
	regs := j.m.Copy(func() { seq = j.written.Load() })
	var size countingWriter
	err := atomicfile.FS{}.Write(j.path, 0o600, func(w io.Writer) error {
		size.w = w
		sw := newSnapshotWriter(&size, seq)
		for _, g := range regs {
			sw.add(record{User: g.User, AccountID: g.AccountID, DeviceToken: g.DeviceToken,
				Mailboxes: g.Mailboxes, RegistrationTime: g.Registered.UTC()})
		}
		return sw.finish()
	})
	if err != nil {
		return fmt.Errorf("write registry snapshot %s: %w", j.path, err)
	}
	j.snapSize.Store(size.n)
	return nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Close stops the housekeeping, then writes a final snapshot so that the
// next start has nothing to replay.
func (j *Store) Close() error {
	defer j.lock.Close()
	close(j.stopc)
	<-j.donec
	j.compactW.Wait()
	j.wmu.Lock()
	j.finishSegment()
	j.wmu.Unlock()
	j.segMu.Lock()
	done := j.segments
	j.segments = nil
	j.segMu.Unlock()
	if err := j.writeSnapshot(); err != nil {
		closeSegments(done)
		return err
	}
	j.removeSegments(done)
	return nil
}

// finishSegment closes the current segment and queues it for compaction;
// one that holds no record is deleted instead.
func (j *Store) finishSegment() {
	if j.seg == nil {
		return
	}
	f := j.seg
	j.seg = nil
	if j.segSize == 0 {
		if err := os.Remove(j.segPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
			j.log.WithError(err).WithField("file", j.segPath).Warn("cannot remove an empty journal segment")
		}
		f.Close()
		return
	}
	// Kept open: its flock marks it as this process's until it is
	// deleted (see segment).
	j.segMu.Lock()
	j.segments = append(j.segments, segment{path: j.segPath, f: f})
	j.segMu.Unlock()
}
