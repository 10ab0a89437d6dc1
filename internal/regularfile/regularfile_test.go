package regularfile

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// within fails the test when f does not return within a few seconds: a
// blocked open would otherwise hang the test binary until its timeout.
func within(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s still blocks after 5 s", what)
	}
}

func TestSpecialFilesAreRefusedWithoutBlocking(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "secret")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, c := range []struct {
		path, kind string
		flag       int
	}{
		{fifo, "a named pipe", os.O_RDONLY},
		{fifo, "a named pipe", os.O_RDWR | os.O_CREATE},
		{fifo, "a named pipe", os.O_WRONLY},
		{"/dev/zero", "a character device", os.O_RDONLY},
		{dir, "a folder", os.O_RDONLY},
		{sock, "", os.O_RDONLY}, // open(2) itself refuses a socket
	} {
		var f *os.File
		var err error
		within(t, "opening "+c.path, func() { f, err = OpenFile(c.path, c.flag, 0o600) })
		if err == nil {
			f.Close()
			t.Errorf("%s (flags %#x) opened", c.path, c.flag)
			continue
		}
		if !strings.Contains(err.Error(), c.path) {
			t.Errorf("the error for %s does not name it: %v", c.path, err)
		}
		if c.kind != "" && (!errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), c.kind)) {
			t.Errorf("the error for %s = %v, want %q", c.path, err, c.kind)
		}
	}
	within(t, "reading the FIFO", func() { _, err = ReadFile(fifo, 0, 0) })
	if !errors.Is(err, ErrNotRegular) {
		t.Errorf("ReadFile of a FIFO = %v", err)
	}
}

func TestReadFileReadsRegularFilesUpToTheLimit(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte("hello"), 0o600)
	if b, err := ReadFile(p, 0, 5); err != nil || string(b) != "hello" {
		t.Errorf("ReadFile = %q, %v", b, err)
	}
	if _, err := ReadFile(p, 0, 4); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), p) {
		t.Errorf("ReadFile over the limit = %v", err)
	}
	link := p + ".link"
	os.Symlink(p, link)
	if _, err := ReadFile(link, syscall.O_NOFOLLOW, 0); !errors.Is(err, syscall.ELOOP) {
		t.Errorf("ReadFile with O_NOFOLLOW of a link = %v", err)
	}
	if b, err := ReadFile(link, 0, 0); err != nil || string(b) != "hello" {
		t.Errorf("ReadFile through a link = %q, %v", b, err)
	}
}
