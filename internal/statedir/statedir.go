// Package statedir names the files of xapsd's state folder, the folder of
// the registry file (databaseFile), and opens them safely. Everyone who
// touches the folder (the file registry, the admin socket, the pushes
// kept over a restart, the Apple push certificates, --check-config) asks
// a Dir for the name instead of deriving it, so the layout is written down
// once:
//
//	database.json                       the registry's snapshot (the file named by databaseFile)
//	database.json.lock                  held by the daemon that owns the registry files
//	database.json.journal.<seq>-<nanos> the registry's journal segments
//	database.json.legacy-<time>.bak     the old daemon's file, kept when it was migrated
//	database.json.damaged-<time>        a damaged snapshot, kept when it was salvaged
//	xapsd.sock                          the admin socket
//	pending-pushes.json                 pushes a shutdown could not send
//	apple-push/                         Apple push certificates (Apple ID, or the old daemon's; internal/applecerts)
//
// With the registry in PostgreSQL only the admin socket, the pending
// pushes and the Apple certificates live here.
package statedir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/regularfile"
)

// Dir is the state folder of one registry file. The zero value is not
// usable; make one with New.
type Dir struct {
	folder   string
	snapshot string
}

// New is the state folder of the registry file snapshot (databaseFile).
func New(snapshot string) Dir {
	return Dir{folder: filepath.Dir(snapshot), snapshot: snapshot}
}

// Folder is the state folder itself.
func (d Dir) Folder() string { return d.folder }

// Snapshot is the registry's snapshot file, the one databaseFile names.
func (d Dir) Snapshot() string { return d.snapshot }

// Lock is the file the daemon that owns the registry files holds an
// flock on. It stays after a stop: its presence says xapsd ran here.
func (d Dir) Lock() string { return d.snapshot + ".lock" }

// segmentPrefix starts every journal segment's name.
func (d Dir) segmentPrefix() string { return d.snapshot + ".journal." }

// Segment names the journal segment whose first record can be number
// first, started at the given time (unix nanoseconds).
func (d Dir) Segment(first uint64, started int64) string {
	return fmt.Sprintf("%s%020d-%d", d.segmentPrefix(), first, started)
}

// SegmentStart is the first record number in a segment's name.
func (d Dir) SegmentStart(path string) (first uint64, ok bool) {
	first, _, ok = parseSegmentName(strings.TrimPrefix(path, d.segmentPrefix()))
	return first, ok
}

// Segments lists the journal segments in the folder in the order they
// were written: by first record number, then by start time.
func (d Dir) Segments() ([]string, error) {
	matches, err := filepath.Glob(d.segmentPrefix() + "*")
	if err != nil {
		return nil, fmt.Errorf("list journal of %s: %w", d.snapshot, err)
	}
	type seg struct {
		path       string
		start, ver uint64
	}
	var segs []seg
	for _, m := range matches {
		start, ver, ok := parseSegmentName(strings.TrimPrefix(m, d.segmentPrefix()))
		if !ok {
			continue
		}
		segs = append(segs, seg{m, start, ver})
	}
	sort.Slice(segs, func(a, b int) bool {
		if segs[a].start != segs[b].start {
			return segs[a].start < segs[b].start
		}
		return segs[a].ver < segs[b].ver
	})
	out := make([]string, len(segs))
	for i, s := range segs {
		out[i] = s.path
	}
	return out, nil
}

func parseSegmentName(s string) (start, ver uint64, ok bool) {
	a, b, found := strings.Cut(s, "-")
	if !found {
		return 0, 0, false
	}
	start, err1 := strconv.ParseUint(a, 10, 64)
	ver, err2 := strconv.ParseUint(b, 10, 64)
	return start, ver, err1 == nil && err2 == nil
}

// stamp is the time in backup names.
func stamp(t time.Time) string { return t.UTC().Format("20060102T150405Z") }

// LegacyBackup names the copy of the old daemon's file kept when it is
// migrated at t.
func (d Dir) LegacyBackup(t time.Time) string {
	return fmt.Sprintf("%s.legacy-%s.bak", d.snapshot, stamp(t))
}

// LegacyBackups lists those copies, oldest first.
func (d Dir) LegacyBackups() []string {
	backups, _ := filepath.Glob(d.snapshot + ".legacy-*.bak")
	sort.Strings(backups)
	return backups
}

// Damaged names the copy of a damaged snapshot kept when it is salvaged
// at t.
func (d Dir) Damaged(t time.Time) string {
	return fmt.Sprintf("%s.damaged-%s", d.snapshot, stamp(t))
}

// AdminSocket is the admin socket the xapsd commands talk to.
func (d Dir) AdminSocket() string { return filepath.Join(d.folder, "xapsd.sock") }

// PendingPushes holds the pushes a shutdown could not send.
func (d Dir) PendingPushes() string { return filepath.Join(d.folder, "pending-pushes.json") }

// AppleCerts is the folder of the Apple push certificates (Apple ID
// mode, or imported from the old daemon), which the packaging makes
// writable with the state folder; internal/applecerts names the files in
// it.
func (d Dir) AppleCerts() string { return filepath.Join(d.folder, "apple-push") }

// RegistryFiles are the files of the file registry that exist now (the
// snapshot, the lock, the journal segments): the ones a start opens.
func (d Dir) RegistryFiles() []string {
	files := []string{d.snapshot, d.Lock()}
	segs, _ := filepath.Glob(d.segmentPrefix() + "*")
	return append(files, segs...)
}

// Make creates the folder (mode 0700) when it is missing, and refuses, or
// repairs, one that every user may write to: anyone could then delete or
// replace the files in it or plant links among them. A folder of xapsd's
// own loses the bit with a warning; a shared one (owned by someone else,
// or sticky like /tmp) is not xapsd's to change, and Make fails.
func (d Dir) Make(log logrus.FieldLogger) error {
	if err := os.MkdirAll(d.folder, 0o700); err != nil {
		return fmt.Errorf("create state folder %s: %w", d.folder, err)
	}
	st, err := os.Stat(d.folder)
	if err != nil {
		return fmt.Errorf("state folder: %w", err)
	}
	perm := st.Mode().Perm()
	if perm&0o002 == 0 {
		return nil
	}
	sys, _ := st.Sys().(*syscall.Stat_t)
	if sys == nil || int(sys.Uid) != os.Geteuid() || st.Mode()&os.ModeSticky != 0 {
		return fmt.Errorf("state folder %s (mode %o) %w; give xapsd a folder of its own (owned by the user it runs as, mode 700)", d.folder, perm, ErrShared)
	}
	if err := os.Chmod(d.folder, perm&^0o002); err != nil {
		return fmt.Errorf("state folder %s can be written by every user and cannot be changed: %w", d.folder, err)
	}
	log.WithField("folder", d.folder).Warnf("the state folder could be written by every user (mode %o); took that away (mode %o)", perm, perm&^0o002)
	return nil
}

// ErrShared is wrapped by Make's error for a folder that every user may
// write to and that is not xapsd's to repair.
var ErrShared = errors.New("can be written by every user")

// ErrLink is wrapped by the error of an open that found a symbolic link.
var ErrLink = errors.New("xapsd does not follow links among its state files")

// OpenFile opens a file of the folder without following a symbolic link:
// whoever can put a link in the state folder could otherwise have xapsd
// read, lock or chmod any file it can reach. Only a regular file opens,
// and the open never waits (a named pipe in place of the snapshot would
// otherwise hang the start).
func OpenFile(path string, flag int, perm os.FileMode) (*os.File, error) {
	f, err := regularfile.OpenFile(path, flag|syscall.O_NOFOLLOW, perm)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%s is a symbolic link; %w", path, ErrLink)
	}
	return f, err
}

// ReadFile reads a file of the folder, up to limit bytes (0: no limit),
// without following a symbolic link (see OpenFile).
func ReadFile(path string, limit int64) ([]byte, error) {
	return regularfile.ReadFile(path, syscall.O_NOFOLLOW, limit)
}
