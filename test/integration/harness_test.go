// Package integration runs the built xapsd binary against real peers: an
// HTTP/2 TLS stand-in for APNs, a real Dovecot with our plugin, and
// SIGKILL at random moments.
package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
)

var xapsdBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "xapsd-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	xapsdBin = filepath.Join(dir, "xapsd")
	pluginBuildDir = dir
	// The race detector watches the daemon too, under real traffic.
	build := exec.Command("go", "build", "-race", "-o", xapsdBin, "../../cmd/xapsd")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build xapsd:", err)
		os.Exit(1)
	}
	code := m.Run()
	images.remove()
	os.RemoveAll(dir)
	os.Exit(code)
}

// syncBuffer collects a process's output for assertions.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// daemon is one xapsd process.
type daemon struct {
	t    *testing.T
	cmd  *exec.Cmd
	addr string
	log  *syncBuffer
	done chan struct{}
	err  error
}

// writeConfig writes xapsd.yaml into dir with a free port, test-friendly
// defaults and the given extra "key: value" lines, which replace a
// default of the same key; it returns the listen address.
func writeConfig(t *testing.T, dir string, extra string) string {
	t.Helper()
	port := testutil.MustFreePort(t)
	keys := []string{"loglevel", "listenAddr", "port", "databaseFile", "metricsListenAddr", "checkInterval", "delay", "shutdownTimeout"}
	vals := map[string]string{"loglevel": "debug", "listenAddr": "127.0.0.1", "port": fmt.Sprint(port),
		"databaseFile": "state/database.json", "metricsListenAddr": `"off"`, "checkInterval": "1", "delay": "1", "shutdownTimeout": "10s"}
	for _, l := range strings.Split(extra, "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		k = strings.TrimSpace(k)
		if _, seen := vals[k]; !seen {
			keys = append(keys, k)
		}
		vals[k] = strings.TrimSpace(v)
	}
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s: %s\n", k, vals[k])
	}
	if err := os.WriteFile(filepath.Join(dir, "xapsd.yaml"), []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort(strings.Trim(vals["listenAddr"], "[]'\""), fmt.Sprint(port))
}

// launch starts argv (xapsd and its arguments, maybe behind nsenter) and
// kills it when the test ends, showing its log if the test failed.
func launch(t *testing.T, dir string, argv []string, env ...string) *daemon {
	t.Helper()
	d := &daemon{t: t, log: &syncBuffer{}, done: make(chan struct{})}
	d.cmd = exec.Command(argv[0], argv[1:]...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	d.cmd.Env = append(os.Environ(), env...)
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.kill()
		if t.Failed() {
			t.Logf("xapsd log:\n%s", d.log.String())
		}
	})
	return d
}

// startDaemon runs xapsd with dir/xapsd.yaml and waits until it answers.
func startDaemon(t *testing.T, dir, addr string, env ...string) *daemon {
	t.Helper()
	return startDaemonBin(t, xapsdBin, dir, addr, env...)
}

// startDaemonBin is startDaemon with another program that runs xapsd (a
// wrapper that sets limits, say).
func startDaemonBin(t *testing.T, bin, dir, addr string, env ...string) *daemon {
	t.Helper()
	d := launch(t, dir, []string{bin, "--config", filepath.Join(dir, "xapsd.yaml")}, env...)
	d.addr = addr
	d.waitAnswering()
	return d
}

// waitAnswering waits until the daemon answers on d.addr.
func (d *daemon) waitAnswering() {
	d.t.Helper()
	// probeClient has a timeout: a daemon that bound its port but hangs
	// before serving must fail the test, not hang it.
	err := testutil.WaitStarted(d.done, 20*time.Second, testutil.Answers(probeClient, "http://"+d.addr+"/healthz"))
	switch {
	case errors.Is(err, testutil.ErrExited):
		d.t.Fatalf("xapsd exited during start: %v\n%s", d.err, d.log.String())
	case err != nil:
		d.t.Fatalf("xapsd did not answer on %s:\n%s", d.addr, d.log.String())
	}
}

func (d *daemon) kill() {
	select {
	case <-d.done:
		return
	default:
	}
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done
}

// stop sends SIGTERM and returns the exit code.
func (d *daemon) stop() int {
	d.t.Helper()
	if !testutil.StopProcess(d.cmd.Process, d.done, syscall.SIGTERM, 30*time.Second) {
		d.t.Fatalf("xapsd did not stop within 30 s after SIGTERM:\n%s", d.log.String())
	}
	return d.cmd.ProcessState.ExitCode()
}

func (d *daemon) signal(s os.Signal) { d.cmd.Process.Signal(s) }

// waitCount waits until substr occurs at least n times in the daemon's
// output, and returns how often it does.
func (d *daemon) waitCount(substr string, n int, timeout time.Duration) int {
	testutil.Wait(timeout, func() bool { return strings.Count(d.log.String(), substr) >= n })
	return strings.Count(d.log.String(), substr)
}

// waitLog waits for a substring in the daemon's output.
func (d *daemon) waitLog(substr string, timeout time.Duration) bool {
	return testutil.Wait(timeout, func() bool { return strings.Contains(d.log.String(), substr) })
}

var client = &http.Client{Timeout: 10 * time.Second}

// probeClient asks whether a daemon answers yet.
var probeClient = &http.Client{Timeout: 2 * time.Second}

// get fetches url and returns the status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// perToken counts the pushes to each device token.
func perToken(reqs []fakeapns.Request) map[string]int {
	got := map[string]int{}
	for _, r := range reqs {
		got[r.Token]++
	}
	return got
}

func post(t *testing.T, addr, path, body string) (int, string) {
	t.Helper()
	resp, err := client.Post("http://"+addr+path, "application/json; charset=utf-8", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func registerBody(user, account, token string, mailboxes ...string) string {
	if len(mailboxes) == 0 {
		mailboxes = []string{"INBOX"}
	}
	return fmt.Sprintf(`{"ApsAccountId":"%s","ApsDeviceToken":"%s","ApsSubtopic":"com.apple.mobilemail","Username":"%s","Mailboxes": ["%s"]}`,
		account, token, user, strings.Join(mailboxes, `","`))
}

func notifyBody(user, mailbox string, events ...string) string {
	return fmt.Sprintf(`{"Username":"%s","Mailbox":"%s","Events": ["%s"]}`, user, mailbox, strings.Join(events, `","`))
}

func token(i int) string { return fmt.Sprintf("%064X", i) }
