package testutil

import (
	"bufio"
	"errors"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestWaitSeesTheConditionAndGivesUpAtTheDeadline(t *testing.T) {
	var n atomic.Int32
	if !Wait(Patience, func() bool { return n.Add(1) >= 5 }) {
		t.Fatal("Wait gave up on a condition that became true")
	}
	start := time.Now()
	if Wait(30*time.Millisecond, func() bool { return false }) {
		t.Fatal("Wait reported a condition that never held")
	}
	if took := time.Since(start); took < 30*time.Millisecond {
		t.Fatalf("Wait gave up after %v, before its deadline", took)
	}
}

func TestFreePortCanBeBound(t *testing.T) {
	port := MustFreePort(t)
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("the free port %d cannot be bound: %v", port, err)
	}
	ln.Close()
}

// start runs a shell script and closes done when it ends.
func start(t *testing.T, script string) (*exec.Cmd, chan struct{}) {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The script says "ready" once its trap is set.
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("script did not start: %q %v", line, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	return cmd, done
}

func TestStopProcessEndsAPoliteProcessWithTheSignal(t *testing.T) {
	cmd, done := start(t, `trap 'exit 3' TERM; echo ready; while :; do sleep 0.01; done`)
	if !StopProcess(cmd.Process, done, syscall.SIGTERM, Patience) {
		t.Fatal("StopProcess killed a process that ends on SIGTERM")
	}
	if code := cmd.ProcessState.ExitCode(); code != 3 {
		t.Fatalf("exit code %d, want the trap's 3", code)
	}
}

func TestStopProcessKillsAProcessThatIgnoresTheSignal(t *testing.T) {
	cmd, done := start(t, `trap '' TERM; echo ready; while :; do sleep 0.01; done`)
	if StopProcess(cmd.Process, done, syscall.SIGTERM, 50*time.Millisecond) {
		t.Fatal("StopProcess says a process that ignores SIGTERM ended on it")
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("process ended with %v, want SIGKILL", cmd.ProcessState)
	}
}

// The test runs itself again as a child, which makes a folder, names it
// and fails or passes as told.
func TestTempDirIsKeptWhenTheTestFailsAndRemovedWhenItPasses(t *testing.T) {
	if mode := os.Getenv("TESTUTIL_TEMPDIR_CHILD"); mode != "" {
		dir := TempDir(t)
		os.Stdout.WriteString("DIR=" + dir + "\n")
		if mode == "fail" {
			t.Fail()
		}
		return
	}
	for _, c := range []struct {
		mode string
		kept bool
	}{{"fail", true}, {"pass", false}} {
		cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v")
		cmd.Env = append(os.Environ(), "TESTUTIL_TEMPDIR_CHILD="+c.mode)
		out, _ := cmd.CombinedOutput()
		_, rest, ok := strings.Cut(string(out), "DIR=")
		if !ok {
			t.Fatalf("%s: the child named no folder:\n%s", c.mode, out)
		}
		dir, _, _ := strings.Cut(rest, "\n")
		_, err := os.Stat(dir)
		if kept := err == nil; kept != c.kept {
			t.Errorf("%s: folder kept %v, want %v:\n%s", c.mode, kept, c.kept, out)
		}
		if c.kept && !strings.Contains(string(out), "kept "+dir) {
			t.Errorf("%s: the log does not name the kept folder:\n%s", c.mode, out)
		}
		os.RemoveAll(dir)
	}
}

func TestWaitStartedTellsAnExitFromATimeout(t *testing.T) {
	done := make(chan struct{})
	if err := WaitStarted(done, 20*time.Millisecond, func() bool { return false }); err == nil || errors.Is(err, ErrExited) {
		t.Fatalf("a process that never got ready: %v, want a timeout", err)
	}
	close(done)
	if err := WaitStarted(done, Patience, func() bool { return false }); !errors.Is(err, ErrExited) {
		t.Fatalf("a process that ended: %v, want ErrExited", err)
	}
	if err := WaitStarted(make(chan struct{}), Patience, func() bool { return true }); err != nil {
		t.Fatalf("a ready process: %v", err)
	}
}
