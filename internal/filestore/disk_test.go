package filestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
)

// disk is a small tmpfs of the test's own that can be filled to the last
// byte: a full disk without touching the machine's.
type disk struct {
	dir    string
	filler string
}

func newDisk(t *testing.T) *disk {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: mounting a tmpfs for a full disk needs root; CI runs these tests as root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m,mode=0700"); err != nil {
		t.Fatalf("mount a tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return &disk{dir: dir, filler: filepath.Join(dir, "filler")}
}

// fill writes until the disk has no byte left.
func (d *disk) fill(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(d.filler, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := bytes.Repeat([]byte("x"), 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling the disk: %v", err)
			}
			break
		}
	}
	for _, n := range []int{512, 64, 1} { // the last partial page too
		for {
			if _, err := f.Write(chunk[:n]); err != nil {
				break
			}
		}
	}
}

func (d *disk) free(t *testing.T) {
	t.Helper()
	if err := os.Remove(d.filler); err != nil {
		t.Fatal(err)
	}
}

func segmentFiles(path string) []string {
	segs, _ := filepath.Glob(path + ".journal.*")
	return segs
}

// A 500 from /register means "not stored": a write that fails on a full
// disk changes nothing in memory, in later snapshots or on disk, reuses
// its segment, and keeps the registry unready until a write succeeds.
func TestFailedWriteChangesNothing(t *testing.T) {
	d := newDisk(t)
	path := filepath.Join(d.dir, "database.json")
	c := newClock()
	var syncs int
	r := open(t, path, c, func(o *setup) { o.RegistryCheckInterval = time.Hour; o.OnSync = func(int, time.Duration) { syncs++ } })
	mustRegister(t, r, reg("alice", acc1, tok1))
	d.fill(t)
	// Larger than the room left in the segment's last page.
	var boxes []string
	for i := range 200 {
		boxes = append(boxes, fmt.Sprintf("Folder %03d with a long name", i))
	}
	for i := range 50 {
		if err := r.Register(context.Background(), reg("bob", acc2, tok2, boxes...)); err == nil {
			t.Fatalf("attempt %d: Register succeeded on a full disk", i)
		}
	}
	if res := r.Lookup("bob", "INBOX", false); res.KnownUser {
		t.Error("a refused registration is looked up")
	}
	if _, n := r.Stats(); n != 1 {
		t.Errorf("%d registrations in memory, want 1", n)
	}
	if segs := segmentFiles(path); len(segs) > 1 {
		t.Errorf("failed writes left %d journal segments: %v", len(segs), segs)
	}
	if r.Health().WriteErr == nil {
		t.Error("Writable reports no problem after failed writes")
	}
	d.free(t)
	if r.Health().WriteErr == nil {
		t.Error("Writable cleared before any write succeeded")
	}
	mustRegister(t, r, reg("carol", acc1, tok2))
	if err := r.Health().WriteErr; err != nil {
		t.Errorf("Writable after a successful write: %v", err)
	}
	// Identical re-registrations after the failure are not written again.
	before := syncs
	mustRegister(t, r, reg("carol", acc1, tok2))
	mustRegister(t, r, reg("alice", acc1, tok1))
	if syncs != before {
		t.Errorf("identical re-registrations after a failed write were written %d times", syncs-before)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r = open(t, path, c)
	defer r.Close()
	if r.Lookup("bob", "INBOX", false).KnownUser {
		t.Error("a refused registration is on disk after a graceful stop")
	}
	if !r.Lookup("alice", "INBOX", false).KnownUser || !r.Lookup("carol", "INBOX", false).KnownUser {
		t.Error("acknowledged registrations lost")
	}
}

// Right after a start on a full disk the registry says it cannot be
// written, and says so no more once the disk has room again.
func TestStartOnFullDiskIsNotWritable(t *testing.T) {
	d := newDisk(t)
	path := filepath.Join(d.dir, "database.json")
	c := newClock()
	r := open(t, path, c)
	mustRegister(t, r, reg("alice", acc1, tok1))
	r.Close()
	d.fill(t)
	r = open(t, path, c, func(o *setup) { o.RegistryCheckInterval = 20 * time.Millisecond })
	defer r.Close()
	if r.Health().WriteErr == nil {
		t.Fatal("Writable reports no problem right after a start on a full disk")
	}
	if !r.Lookup("alice", "INBOX", false).KnownUser {
		t.Error("registry not loaded")
	}
	d.free(t)
	testutil.WaitFor(t, "the registry to be writable once the disk was freed", func() bool { return r.Health().WriteErr == nil })
	mustRegister(t, r, reg("bob", acc2, tok2))
}
