package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"

	"github.com/xapsd/xapsd/internal/config"
	"github.com/xapsd/xapsd/internal/pgstore"
	"github.com/xapsd/xapsd/internal/regularfile"
	"github.com/xapsd/xapsd/internal/statedir"
)

// Check is --check-config's work beyond the file itself: it loads the
// credential as a start would and checks that the user running it can
// write the state folder. It returns the summary a start would log, notes
// for what would only keep devices from registering, and an error for
// what would stop the start.
func Check(c *config.Config) (Summary, []string, error) {
	notes, cred, err := checkCredential(c)
	if err != nil {
		return Summary{}, nil, err
	}
	if err := CheckStateDir(c); err != nil {
		return Summary{}, notes, err
	}
	if c.DatabaseURL != "" && c.DatabasePasswordFile != "" {
		// The start reads it before it connects, and stops if it cannot.
		if _, err := regularfile.ReadFile(c.DatabasePasswordFile, 0, 0); err != nil {
			return Summary{}, notes, fmt.Errorf("databasePasswordFile: %w", err)
		}
	}
	addrNotes, err := checkAddresses(c, net.Listen)
	notes = append(notes, addrNotes...)
	if err != nil {
		return Summary{}, notes, err
	}
	listen := c.ListenAddresses()
	if c.TLSEnabled() {
		listen = append(listen, "tls:"+c.TLSListenAddress())
	}
	s := summarize(c, cred, listen)
	if s.DryRun {
		notes = append(notes, "apnsEndpoint is dry-run: pushes are logged, never sent to Apple")
	}
	return s, notes, nil
}

// Access modes of access(2).
const (
	accessW = 0x2
	accessX = 0x1
)

// CheckStateDir checks that the user running it can create and replace
// files in databaseFile's folder and write the ones xapsd keeps there. A
// folder that does not exist yet is created at start, so its nearest
// existing parent must be writable instead.
func CheckStateDir(c *config.Config) error {
	state := statedir.New(c.DatabaseFile)
	dir := state.Folder()
	existing := dir
	for {
		st, err := os.Stat(existing)
		if err == nil {
			if !st.IsDir() {
				return fmt.Errorf("state folder %s (the folder of databaseFile): %s is not a folder", dir, existing)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("state folder %s (the folder of databaseFile): %w", dir, err)
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		existing = parent
	}
	if err := syscall.Access(existing, accessW|accessX); err != nil {
		what := "state folder " + dir
		if existing != dir {
			what = fmt.Sprintf("state folder %s does not exist and %s, where it would be made,", dir, existing)
		}
		return fmt.Errorf("%s (the folder of databaseFile) is not writable by %s: %w", what, whoAmI(), err)
	}
	if existing != dir {
		return nil
	}
	// The files a start opens for writing: an old one left by another
	// user (root, say) stops the start with "permission denied", and so
	// does one of the registry's that is not a regular file.
	registryFiles := state.RegistryFiles()
	for _, f := range append(registryFiles, state.PendingPushes()) {
		st, err := os.Lstat(f)
		if err != nil {
			continue
		}
		if !st.Mode().IsRegular() && slices.Contains(registryFiles, f) && c.DatabaseURL == "" {
			return fmt.Errorf("%s in the state folder is not a regular file (mode %s); xapsd opens only regular files there", f, st.Mode())
		}
		if err := syscall.Access(f, accessW); err != nil {
			return fmt.Errorf("%s in the state folder is not writable by %s: %w (give the folder and its files to the user xapsd runs as)", f, whoAmI(), err)
		}
	}
	return nil
}

// stateError says what the admin can do about an error of the state
// folder or of the registry's store: which folder or file is not writable
// and for which user (as --check-config says it), or which setting names
// what does not work.
func stateError(c *config.Config, err error) error {
	switch {
	case errors.Is(err, fs.ErrPermission):
		if why := CheckStateDir(c); why != nil {
			return why
		}
	case errors.Is(err, statedir.ErrLink):
		return fmt.Errorf("%w: point databaseFile at the real file", err)
	case errors.Is(err, statedir.ErrShared):
		return fmt.Errorf("%w, and point databaseFile into it", err)
	case errors.Is(err, pgstore.ErrURL):
		return fmt.Errorf("databaseURL: %w", err)
	case errors.Is(err, pgstore.ErrPasswordFile):
		return fmt.Errorf("databasePasswordFile: %w", err)
	}
	return err
}

// whoAmI names the user running the check, as access(2) checks for it.
func whoAmI() string {
	uid := os.Getuid()
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return fmt.Sprintf("user %s (uid %d)", u.Username, uid)
	}
	return fmt.Sprintf("uid %d", uid)
}
