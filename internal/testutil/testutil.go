// Package testutil holds the helpers every test of xapsd needs, written
// once: waiting for a condition with a deadline, a free loopback port,
// stopping a process (politely, then firmly) and a temporary folder that
// is kept when the test fails, so its logs and state can be read.
//
// Tests wait for events, never for time: Wait polls a condition that
// says the event happened, and gives up at a deadline that only a broken
// program reaches. A test that proves something did not happen waits for
// a later event that shows it would have, instead of sleeping.
//
// It does not import "testing" (tests pass their *testing.T as a TB), so
// cmd/xapsd-bench, pgtest and fakeapns can use it too.
package testutil

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// TB is the part of testing.TB the helpers use.
type TB interface {
	Helper()
	Name() string
	Failed() bool
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
}

// Patience is how long a test waits for something that takes
// milliseconds when all is well: long enough for a loaded two-core CI
// machine under the race detector, short enough that a hang fails soon.
const Patience = 10 * time.Second

// Wait polls cond until it holds or timeout has passed, and reports
// whether it held. It looks often at first and less often later (from
// 1 ms up to every 50 ms), so a quick event is seen at once and a slow
// one does not cost a busy loop.
func Wait(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	pause := time.Millisecond
	for !cond() {
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		time.Sleep(min(pause, left))
		pause = min(2*pause, 50*time.Millisecond)
	}
	return true
}

// WaitFor fails the test, naming what it waited for, unless cond holds
// within Patience.
func WaitFor(t TB, what string, cond func() bool) {
	t.Helper()
	WaitWithin(t, Patience, what, cond)
}

// WaitWithin is WaitFor with another deadline, for events that take
// seconds by design (a daemon's start, a retry's backoff).
func WaitWithin(t TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Wait(timeout, cond) {
		t.Fatalf("waited %v for %s", timeout, what)
	}
}

// ErrExited is WaitStarted's answer when the process ended first.
var ErrExited = errors.New("exited during start")

// WaitStarted waits until a process that is starting is ready (ready
// polls it: answers on its port, say), and returns ErrExited if it ends
// first (done closes) or an error after timeout. ready must bound its own
// time: a process that listens but never answers must not hang the wait.
func WaitStarted(done <-chan struct{}, timeout time.Duration, ready func() bool) error {
	exited := false
	ok := Wait(timeout, func() bool {
		select {
		case <-done:
			exited = true
			return true
		default:
		}
		return ready()
	})
	switch {
	case exited:
		return ErrExited
	case !ok:
		return fmt.Errorf("not ready within %v", timeout)
	}
	return nil
}

// Answers is a readiness probe for WaitStarted: whether url answers a GET
// with any status, through c, whose timeout must bound each try.
func Answers(c *http.Client, url string) func() bool {
	return func() bool {
		resp, err := c.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	}
}

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on now.
// Another process may take it before the caller binds it; tests that
// can hand over a listener instead should.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// MustFreePort is FreePort for a test, which fails if there is none.
func MustFreePort(t TB) int {
	t.Helper()
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// StopProcess sends sig to p and waits up to grace for done (closed by
// whoever waits for the process); then it kills p and waits for done
// again. It reports whether p ended within grace, before it was killed.
func StopProcess(p *os.Process, done <-chan struct{}, sig os.Signal, grace time.Duration) bool {
	select {
	case <-done:
		return true
	default:
	}
	p.Signal(sig) // an error means it has ended: done says so
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
	}
	p.Signal(syscall.SIGKILL)
	<-done
	return false
}

// TempDir makes a folder for the test, removed when the test ends as
// t.TempDir's is, but kept (and named in the test's log) when the test
// failed: a daemon's log, state and configuration are what explain a
// failure.
func TempDir(t TB) string {
	t.Helper()
	// Names of subtests hold slashes and spaces; the folder's name only
	// has to show whose it is, and stays short: a Unix socket's path in
	// it must fit in 108 bytes.
	name := strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' || r == os.PathSeparator {
			return '_'
		}
		return r
	}, t.Name())
	if len(name) > 32 {
		name = name[:32]
	}
	dir, err := os.MkdirTemp("", "xapsd-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kept %s for inspection (the test failed)", dir)
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove the test's folder: %v", err)
		}
	})
	return filepath.Clean(dir)
}

// Buffer collects a log for assertions; it is safe for concurrent use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
