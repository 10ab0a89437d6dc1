package filestore

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: needs root (to chown files to another user); CI runs these tests as root")
	}
}

// A state folder every user can write to is repaired when it is xapsd's
// own, and refused when it is shared: anyone could replace the files.
func TestWorldWritableFolderIsRepairedWhenOwnAndRefusedWhenShared(t *testing.T) {
	t.Run("own folder is repaired", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "state")
		os.Mkdir(dir, 0o700)
		os.Chmod(dir, 0o777)
		r := open(t, filepath.Join(dir, "database.json"), newClock())
		r.Close()
		if st, _ := os.Stat(dir); st.Mode().Perm() != 0o775 {
			t.Errorf("folder mode %o, want 775 (the bit for others taken away)", st.Mode().Perm())
		}
	})
	refused := func(t *testing.T, dir string) {
		t.Helper()
		_, err := openWith(defaults(filepath.Join(dir, "database.json")))
		if err == nil || !strings.Contains(err.Error(), "can be written by every user") {
			t.Fatalf("Open = %v, want a refusal", err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("refused, but wrote %d files into the folder", len(entries))
		}
		if st, _ := os.Stat(dir); st.Mode().Perm()&0o002 == 0 {
			t.Error("changed a folder that is not xapsd's")
		}
	}
	t.Run("sticky shared folder is refused", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "tmp")
		os.Mkdir(dir, 0o700)
		os.Chmod(dir, 0o777|os.ModeSticky)
		refused(t, dir)
	})
	t.Run("another user's folder is refused", func(t *testing.T) {
		needRoot(t)
		dir := filepath.Join(t.TempDir(), "theirs")
		os.Mkdir(dir, 0o700)
		os.Chmod(dir, 0o777)
		if err := os.Chown(dir, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		refused(t, dir)
	})
}

// State files are never opened through a symbolic link: the target is not
// read, locked, chmodded or created.
func TestSymlinkedStateFilesAreNotFollowed(t *testing.T) {
	for _, name := range []string{"database.json", "database.json.lock", "database.json.journal.00000000000000000001-1"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			target := filepath.Join(dir, "elsewhere")
			os.WriteFile(target, []byte(`{"Version":2,"Seq":0,"Registrations":[`+"\n]}\n"), 0o644)
			if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
			r, err := openWith(defaults(filepath.Join(dir, "database.json")))
			if err == nil {
				r.Close()
				t.Fatal("Open followed a symbolic link")
			}
			if !strings.Contains(err.Error(), "symbolic link") {
				t.Errorf("error %q does not name the link", err)
			}
			if st, _ := os.Stat(target); st.Mode().Perm() != 0o644 {
				t.Errorf("the link's target was changed to mode %o", st.Mode().Perm())
			}
		})
	}
}

// A named pipe among the registry's files (the snapshot, a journal
// segment, the lock) stops Open at once with its path, instead of an open
// that waits for a writer forever.
func TestNamedPipesAmongTheStateFilesAreRefused(t *testing.T) {
	for _, name := range []string{"database.json", "database.json.journal.00000000000000000001-1", "database.json.lock"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			fifo := filepath.Join(dir, name)
			if err := syscall.Mkfifo(fifo, 0o600); err != nil {
				t.Fatal(err)
			}
			errc := make(chan error, 1)
			go func() {
				r, err := openWith(defaults(filepath.Join(dir, "database.json")))
				if err == nil {
					r.Close()
				}
				errc <- err
			}()
			select {
			case err := <-errc:
				if err == nil || !strings.Contains(err.Error(), fifo) || !strings.Contains(err.Error(), "not a regular file") {
					t.Errorf("Open = %v, want a refusal naming %s", err, fifo)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Open still waits on the named pipe after 10 s")
			}
		})
	}
}
