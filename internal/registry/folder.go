package registry

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/regularfile"
)

// openState opens one of the registry's files without following a
// symbolic link: whoever can put a link in the state folder could
// otherwise have xapsd read, lock or chmod any file it can reach. Only a
// regular file opens, and the open never waits (a named pipe in place of
// database.json would otherwise hang the start).
func openState(path string, flag int, perm os.FileMode) (*os.File, error) {
	f, err := regularfile.OpenFile(path, flag|syscall.O_NOFOLLOW, perm)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%s is a symbolic link; xapsd does not follow links among its state files: point databaseFile at the real file", path)
	}
	return f, err
}

// checkFolder refuses, or repairs, a state folder that every user may
// write to: anyone could then delete or replace the registry's files or
// plant links among them. A folder of xapsd's own loses the bit with a
// warning; a shared one (owned by someone else, or sticky like /tmp) is
// not xapsd's to change, and the start stops.
func checkFolder(dir string, log logrus.FieldLogger) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("registry folder: %w", err)
	}
	perm := st.Mode().Perm()
	if perm&0o002 == 0 {
		return nil
	}
	sys, _ := st.Sys().(*syscall.Stat_t)
	if sys == nil || int(sys.Uid) != os.Geteuid() || st.Mode()&os.ModeSticky != 0 {
		return fmt.Errorf("registry folder %s (mode %o) can be written by every user; give xapsd a folder of its own (owned by the user it runs as, mode 700) and point databaseFile into it", dir, perm)
	}
	if err := os.Chmod(dir, perm&^0o002); err != nil {
		return fmt.Errorf("registry folder %s can be written by every user and cannot be changed: %w", dir, err)
	}
	log.WithField("folder", dir).Warnf("the registry folder could be written by every user (mode %o); took that away (mode %o)", perm, perm&^0o002)
	return nil
}
