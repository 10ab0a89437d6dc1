package filestore

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
)

// State files deleted under a running registry are noticed and written
// again from memory, so the next kill -9 loses nothing acknowledged.
func TestDeletedStateFilesAreWrittenAgain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	fast := func(o *setup) { o.RegistryCheckInterval = 20 * time.Millisecond }
	r := open(t, path, c, fast)
	mustRegister(t, r, reg("alice", acc1, tok1))
	mustRegister(t, r, reg("bob", acc1, tok1))
	for _, p := range append(segmentFiles(path), path, path+".lock") {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	testutil.WaitFor(t, "a new snapshot", func() bool { _, err := os.Stat(path); return err == nil })
	testutil.WaitFor(t, "a new lock file held by the registry", func() bool {
		f, err := os.Open(path + ".lock")
		if err != nil {
			return false
		}
		defer f.Close()
		return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == syscall.EWOULDBLOCK
	})
	mustRegister(t, r, reg("carol", acc1, tok1))
	crash(r)
	r = open(t, path, c)
	defer r.Close()
	if u, _ := r.Stats(); u != 3 {
		t.Errorf("%d users after deleting the files and a kill, want 3", u)
	}
}

// A second registry on the same file, after someone deleted the lock
// file, must not start, and above all must not delete the running one's
// journal segment on its way out.
func TestSecondOpenAfterLockDeletedTouchesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	slow := func(o *setup) { o.RegistryCheckInterval = time.Hour } // the lock file is not made again meanwhile
	r := open(t, path, c, slow)
	mustRegister(t, r, reg("alice", acc1, tok1))
	seg := jr(r).segPath
	os.Remove(path + ".lock")
	second, err := openWith(defaults(path, func(s *setup) { s.Now = c.Now }))
	if err == nil {
		second.Close()
		t.Fatal("a second registry opened the file of a running one")
	}
	if !strings.Contains(err.Error(), "in use by another xapsd") {
		t.Errorf("error %q does not say the registry is in use", err)
	}
	if _, err := os.Stat(seg); err != nil {
		t.Fatalf("the running registry's journal segment is gone: %v", err)
	}
	mustRegister(t, r, reg("bob", acc1, tok1))
	crash(r)
	r = open(t, path, c)
	defer r.Close()
	if u, _ := r.Stats(); u != 2 {
		t.Errorf("%d users, want 2: acknowledged registrations were lost", u)
	}
}
