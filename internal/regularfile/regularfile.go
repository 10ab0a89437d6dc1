// Package regularfile opens the files xapsd reads (its configuration, the
// credentials, the plugin's secret, the state folder's files) so that no
// file can hang it: the open itself never waits, and anything that is not
// a regular file is refused with an error that names the path.
//
// A plain open(2) of a named pipe blocks until someone opens its other
// end, and a read of a character device may never end; a FIFO put where
// pluginSecretFile or database.json should be would stop the start (and
// --check-config) for good, deaf to SIGTERM, because the blocked open
// holds the goroutine that would act on it.
package regularfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// ErrNotRegular is wrapped by the error for a path that names a named
// pipe, a device, a socket or a folder.
var ErrNotRegular = errors.New("not a regular file")

// OpenFile is os.OpenFile for regular files only. O_NONBLOCK is added, so
// that opening a named pipe returns at once (it has no effect on a
// regular file's reads and writes); what the open found is then refused
// unless it is a regular file. The error is an *fs.PathError naming path.
func OpenFile(path string, flag int, perm os.FileMode) (*os.File, error) {
	f, err := os.OpenFile(path, flag|syscall.O_NONBLOCK|syscall.O_NOCTTY, perm)
	if err != nil {
		if errors.Is(err, syscall.ENXIO) {
			// A write-only open of a named pipe nobody reads.
			return nil, &fs.PathError{Op: "open", Path: path, Err: fmt.Errorf("%w (a named pipe)", ErrNotRegular)}
		}
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, &fs.PathError{Op: "open", Path: path, Err: fmt.Errorf("%w (%s)", ErrNotRegular, kind(st.Mode()))}
	}
	return f, nil
}

// Open opens path for reading (OpenFile with O_RDONLY).
func Open(path string) (*os.File, error) {
	return OpenFile(path, os.O_RDONLY, 0)
}

// ErrTooLarge is wrapped by ReadFile's error for a file over its limit.
var ErrTooLarge = errors.New("larger than expected")

// ReadFile reads a regular file whole. flag is added to O_RDONLY
// (O_NOFOLLOW for the state folder's files); a limit above zero refuses a
// file larger than limit bytes instead of reading all of it.
func ReadFile(path string, flag int, limit int64) ([]byte, error) {
	f, err := OpenFile(path, os.O_RDONLY|flag, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	if limit > 0 {
		r = io.LimitReader(f, limit+1)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	if limit > 0 && int64(len(data)) > limit {
		return nil, &fs.PathError{Op: "read", Path: path, Err: fmt.Errorf("%w: over %d bytes", ErrTooLarge, limit)}
	}
	return data, nil
}

// kind names what a path is, for the error message.
func kind(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m.IsDir():
		return "a folder"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "mode " + m.String()
}
