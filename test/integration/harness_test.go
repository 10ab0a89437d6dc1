// Package integration runs the built xapsd binary against real peers: an
// HTTP/2 TLS stand-in for APNs, a real Dovecot with our plugin, and
// SIGKILL at random moments.
package integration

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
	"github.com/xapsd/xapsd/internal/testutil/testpki"
	"github.com/xapsd/xapsd/internal/testutil/xapsdtest"
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
type syncBuffer = xapsdtest.Buffer

// daemon is one xapsd process.
type daemon struct {
	t    *testing.T
	cmd  *exec.Cmd
	addr string
	log  *syncBuffer
	done chan struct{}
	err  error
}

// launch starts argv (xapsd and its arguments, maybe behind nsenter) and
// kills it when the test ends, showing its log if the test failed.
func launch(t *testing.T, dir string, argv []string, env ...string) *daemon {
	t.Helper()
	d := &daemon{t: t, log: &xapsdtest.Buffer{}, done: make(chan struct{})}
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
	return xapsdtest.WaitCount(d.log, substr, n, timeout)
}

// waitLog waits for a substring in the daemon's output.
func (d *daemon) waitLog(substr string, timeout time.Duration) bool {
	return xapsdtest.WaitLog(d.log, substr, timeout)
}

var client = xapsdtest.Client

// probeClient asks whether a daemon answers yet.
var probeClient = &http.Client{Timeout: 2 * time.Second}

// What the tests of the daemon share, in process or as the built binary,
// written once in xapsdtest.
const (
	topicA = xapsdtest.TopicA
	topicB = xapsdtest.TopicB
	acc    = xapsdtest.Acc
)

var (
	writeConfig   = xapsdtest.WriteConfig
	get           = xapsdtest.Get
	post          = xapsdtest.Post
	registerBody  = xapsdtest.RegisterBody
	notifyBody    = xapsdtest.NotifyBody
	token         = xapsdtest.Token
	perToken      = xapsdtest.PerToken
	writePushCert = xapsdtest.WritePushCert
	rewrite       = xapsdtest.Rewrite
	logLine       = xapsdtest.LogLine
	grepLines     = xapsdtest.GrepLines
	mustRead      = xapsdtest.MustRead
)

const pluginSecret = xapsdtest.PluginSecret

// apnsEnv is the built daemon pushing with a real client certificate to
// the HTTP/2 TLS stand-in for Apple, which it trusts through
// SSL_CERT_FILE.
type apnsEnv struct {
	dir   string
	addr  string
	apns  *fakeapns.Server
	d     *daemon
	ca    *testpki.CA
	caEnv string
}

func newAPNsEnv(t *testing.T, extra string) *apnsEnv {
	t.Helper()
	s := xapsdtest.NewAPNsSetup(t, extra)
	e := &apnsEnv{dir: s.Dir, addr: s.Addr, apns: s.APNs, ca: s.CA, caEnv: "SSL_CERT_FILE=" + s.CAFile}
	e.d = startDaemon(t, e.dir, e.addr, e.caEnv)
	return e
}

func (e *apnsEnv) register(t *testing.T, user, account, tok string, boxes ...string) {
	t.Helper()
	status, body := post(t, e.addr, "/register", registerBody(user, account, tok, boxes...))
	if status != 200 {
		t.Fatalf("register %s: %d %q", user, status, body)
	}
}
