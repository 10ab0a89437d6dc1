package integration

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xapsd/xapsd/internal/testutil"
)

// netns is a network namespace of its own, with only a loopback
// interface: the shipped files name fixed ports (11619, 11621), and in
// here they are free whatever else runs on the machine.
type netns struct {
	path string // /proc/PID/ns/net of the process that holds it
}

func newNetns(t *testing.T) *netns {
	t.Helper()
	cmd := exec.Command("unshare", "--net", "sh", "-c", "ip link set lo up && echo up && exec sleep 1000000")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("unshare --net: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if l, err := bufio.NewReader(out).ReadString('\n'); err != nil || l != "up\n" {
		t.Fatalf("the network namespace's loopback did not come up: %q %v", l, err)
	}
	return &netns{path: fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid)}
}

// argv runs argv inside the namespace.
func (n *netns) argv(argv ...string) []string {
	return append([]string{"nsenter", "--net=" + n.path}, argv...)
}

// do runs f on a thread that has joined the namespace, so that the sockets
// f makes belong to it. The thread stays locked and ends with its
// goroutine, so no other goroutine ever runs in the namespace.
func (n *netns) do(f func()) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := os.Open(n.path)
		if err != nil {
			done <- err
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("setns: %w", err)
			return
		}
		f()
		done <- nil
	}()
	return <-done
}

// dial connects from inside the namespace.
func (n *netns) dial(network, addr string) (c net.Conn, err error) {
	if nsErr := n.do(func() { c, err = net.DialTimeout(network, addr, 5*time.Second) }); nsErr != nil {
		return nil, nsErr
	}
	return c, err
}

// listen listens inside the namespace; the listener accepts from any
// goroutine.
func (n *netns) listen(network, addr string) (ln net.Listener, err error) {
	if nsErr := n.do(func() { ln, err = net.Listen(network, addr) }); nsErr != nil {
		return nil, nsErr
	}
	return ln, err
}

// startDaemon runs xapsd with the configuration file cfg inside the
// namespace and waits for its start-up line.
func (n *netns) startDaemon(t *testing.T, cfg string) *daemon {
	t.Helper()
	d := launch(t, filepath.Dir(cfg), n.argv(xapsdBin, "--config", cfg))
	if !d.waitLog("xapsd is running", 20*time.Second) {
		t.Fatal("xapsd did not start")
	}
	return d
}

// waitLine waits for a log line that has every one of parts.
func (d *daemon) waitLine(timeout time.Duration, parts ...string) bool {
	return testutil.Wait(timeout, func() bool {
		for _, l := range strings.Split(d.log.String(), "\n") {
			all := true
			for _, p := range parts {
				all = all && strings.Contains(l, p)
			}
			if all {
				return true
			}
		}
		return false
	})
}

// The files an admin installs, untouched where it matters: the sample
// xapsd.yaml (listenAddr and port as shipped) and the shipped Dovecot
// snippet for the Dovecot at hand (url=http://127.0.0.1:11619). A phone
// registers through Dovecot, and a delivery wakes it. The plugin URL may
// say 127.0.0.1 (the snippet), [::1] or localhost (set per user here), and
// each reaches xapsd's default listeners.
func TestE2EShippedSnippetAndSampleConfig(t *testing.T) {
	forEachDovecot(t, testE2EShippedSnippetAndSampleConfig)
}

func testE2EShippedSnippetAndSampleConfig(t *testing.T, dv dovecotKind) {
	ns := newNetns(t)
	dir := testutil.TempDir(t)
	// Only what a test cannot take from the sample is added: a state
	// folder it may write (the sample's is /var/lib/xapsd) and dry-run, as
	// the sample has no credential.
	conf := append(mustRead(t, "../../configs/xapsd/xapsd.yaml"), "\ndatabaseFile: state/database.json\napnsEndpoint: dry-run\n"...)
	if err := os.WriteFile(filepath.Join(dir, "xapsd.yaml"), conf, 0o600); err != nil {
		t.Fatal(err)
	}
	d := ns.startDaemon(t, filepath.Join(dir, "xapsd.yaml"))
	for _, a := range []string{"127.0.0.1:11619", "[::1]:11619"} {
		if !strings.Contains(d.log.String(), `listening for the Dovecot plugin" addr="`+a+`"`) {
			t.Errorf("the sample config does not listen on %s", a)
		}
	}

	snippet := "../../configs/dovecot/2.3/95-xaps.conf"
	perUser := func(url string) string { return "userdb_xaps_config=url=" + url }
	if dv.plugin(t).framework {
		snippet = "../../configs/dovecot/2.4/95-xaps.conf"
		perUser = func(url string) string { return "userdb_xaps_url=" + url }
	}
	urls := map[string]string{
		"alice": "", // the snippet's own url, http://127.0.0.1:11619
		"bob":   "http://[::1]:11619",
		"carol": "http://localhost:11619",
	}
	userdb := map[string]string{}
	for u, url := range urls {
		if url != "" {
			userdb[u] = perUser(url)
		}
	}
	dc := startDovecotWith(t, dv, dovecotOptions{snippet: snippet, userdb: userdb, netns: ns})
	for i, u := range []string{"alice", "bob", "carol"} {
		ios := imapLoginVia(t, dc.dial, dc.imap, u)
		lines, ok := ios.registerLikeIOS(acc, token(i+1), "INBOX")
		if !ok || !strings.Contains(strings.Join(lines, "\n"), `aps-topic "com.apple.mail.XServer.00000000-0000-4000-8000-000000000000"`) {
			t.Errorf("%s (url %q): registration through Dovecot failed: %q", u, urls[u], lines)
			continue
		}
		deliverVia(t, dc.dial, dc.lmtp, u+"@example.org")
		if !d.waitLine(10*time.Second, "msg=push ", "outcome=dry-run", "user="+u) {
			t.Errorf("%s (url %q): no push after a delivery", u, urls[u])
		}
	}
	if code := d.stop(); code != 0 {
		t.Errorf("xapsd exited %d", code)
	}
}
