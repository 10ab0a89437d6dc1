// Package atomicfile replaces files so that a reader, or a crash, only ever
// sees the old content or the new content, never a mix.
//
// The steps are the ones a crash-safe replace needs, in order: write a temp
// file in the same folder (so the rename cannot cross file systems), fsync
// it, close it, rename it over the target, then fsync the folder so the
// rename itself is durable. Files are created with the mode the caller
// asks for (xapsd uses 0600: the registry and keys are private).
package atomicfile

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// file is the part of *os.File that a replace needs. Tests swap in a fake
// through FS to make each step fail in turn.
type file interface {
	io.Writer
	Name() string
	Chmod(mode os.FileMode) error
	Sync() error
	Close() error
}

// FS holds the operating-system calls used by WriteFile. The zero value
// uses the real ones; tests replace single fields to inject failures.
type FS struct {
	CreateTemp func(dir, pattern string) (file, error)
	Rename     func(oldpath, newpath string) error
	Remove     func(name string) error
	SyncDir    func(dir string) error
}

func (fs FS) withDefaults() FS {
	if fs.CreateTemp == nil {
		fs.CreateTemp = func(dir, pattern string) (file, error) { return os.CreateTemp(dir, pattern) }
	}
	if fs.Rename == nil {
		fs.Rename = os.Rename
	}
	if fs.Remove == nil {
		fs.Remove = os.Remove
	}
	if fs.SyncDir == nil {
		fs.SyncDir = SyncDir
	}
	return fs
}

// WriteFile atomically replaces path with data, durable when it returns nil.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	return FS{}.Write(path, mode, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// Write atomically replaces path with what fill writes, durable when it
// returns nil. On any failure the target is left as it was and the temp
// file is removed.
func (fs FS) Write(path string, mode os.FileMode, fill func(io.Writer) error) (err error) {
	fs = fs.withDefaults()
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := fs.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("create temp file for %s: %w", path, err)
	}
	tmp := f.Name()
	closed := false
	defer func() {
		if err == nil {
			return
		}
		if !closed {
			f.Close()
		}
		fs.Remove(tmp)
	}()
	if err = f.Chmod(mode); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err = fill(f); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	closed = true
	if err = f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err = fs.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp, path, err)
	}
	// From here the new content is in place; a failed folder sync only
	// means the rename might not survive a power cut, so report it but
	// do not remove anything.
	if serr := fs.SyncDir(dir); serr != nil {
		return fmt.Errorf("sync folder of %s: %w", path, serr)
	}
	return nil
}

// SyncDir fsyncs a folder so that renames and new files in it are durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
