package atomicfile

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFileReplacesWithMode(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "db.json")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(path, []byte("new"), 0o600); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	got, err := os.ReadFile(path)
	if err != nil || string(got) != "new" {
		t.Fatalf("content = %q, %v; want new", got, err)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", st.Mode().Perm())
	}
	assertOnlyFile(t, dir, "db.json")
}

// fakeFile wraps a real temp file and fails the step named in failAt.
type fakeFile struct {
	*os.File
	failAt string
}

var errInjected = errors.New("injected")

func (f *fakeFile) Write(p []byte) (int, error) {
	if f.failAt == "write" {
		return 0, errInjected
	}
	return f.File.Write(p)
}
func (f *fakeFile) Chmod(m os.FileMode) error {
	if f.failAt == "chmod" {
		return errInjected
	}
	return f.File.Chmod(m)
}
func (f *fakeFile) Sync() error {
	if f.failAt == "sync" {
		return errInjected
	}
	return f.File.Sync()
}
func (f *fakeFile) Close() error {
	err := f.File.Close()
	if f.failAt == "close" {
		return errInjected
	}
	return err
}

func TestEveryFailingStepKeepsOldContentAndCleansUp(t *testing.T) {
	for _, step := range []string{"create", "chmod", "write", "sync", "close", "rename"} {
		t.Run(step, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "db.json")
			if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
				t.Fatal(err)
			}
			fs := FS{
				CreateTemp: func(d, p string) (file, error) {
					if step == "create" {
						return nil, errInjected
					}
					f, err := os.CreateTemp(d, p)
					if err != nil {
						return nil, err
					}
					return &fakeFile{File: f, failAt: step}, nil
				},
				Rename: func(o, n string) error {
					if step == "rename" {
						return errInjected
					}
					return os.Rename(o, n)
				},
			}
			err := fs.Write(path, 0o600, func(w io.Writer) error {
				_, err := w.Write([]byte("new"))
				return err
			})
			if !errors.Is(err, errInjected) {
				t.Fatalf("err = %v, want injected failure", err)
			}
			got, _ := os.ReadFile(path)
			if string(got) != "old" {
				t.Errorf("content = %q after failed %s, want old", got, step)
			}
			assertOnlyFile(t, dir, "db.json")
		})
	}
}

func TestFolderSyncFailureIsReportedAfterRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "db.json")
	fs := FS{SyncDir: func(string) error { return errInjected }}
	err := fs.Write(path, 0o600, func(w io.Writer) error { _, err := w.Write([]byte("new")); return err })
	if !errors.Is(err, errInjected) {
		t.Fatalf("err = %v, want injected", err)
	}
	if got, _ := os.ReadFile(path); string(got) != "new" {
		t.Errorf("content = %q, want new (rename already happened)", got)
	}
}

func assertOnlyFile(t *testing.T, dir, name string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != name {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("folder holds %v, want only %s", names, name)
	}
}
