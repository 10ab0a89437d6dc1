package integration

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

// docker-mailserver with push: the Dockerfile's default target, built on
// the docker-mailserver 16 stand-in, set up as docs/docker-mailserver.md
// says (its xapsd.yaml, with the APNs stand-in as the endpoint) with the
// volumes of docker-mailserver's compose.yaml as folders on the host. Two
// iPhones register over IMAP and mail comes in over SMTP through Postfix
// and Dovecot's LMTP; xapsd runs as its own user with the documented ids,
// starts before and stops after the mail services, sends what it holds
// within podman's 10 s, and a container made again from the same volumes
// keeps both registrations.
func TestMailserverImage(t *testing.T) {
	img := containerImages(t)
	ns := newNetns(t)
	apns := startAPNsIn(t, ns)
	host := testutil.TempDir(t)
	volume := func(name string) string {
		p := filepath.Join(host, name)
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	config, state, logs := volume("config"), volume("mail-state"), volume("supervisor-logs")
	writeMailserverConfig(t, config, apns)
	opts := []string{"--hostname", "mail.example.org",
		"--volume", config + ":/tmp/docker-mailserver", "--volume", state + ":/var/mail-state",
		"--volume", volume("mail-data") + ":/var/mail", "--volume", volume("mail-logs") + ":/var/log/mail",
		// Not a volume in docker-mailserver; here so that the logs outlive
		// the container.
		"--volume", logs + ":/var/log/supervisor",
		// xapsd trusts the APNs stand-in's CA instead of the system's.
		"--env", "SSL_CERT_FILE=/tmp/docker-mailserver/xapsd/apns-ca.pem"}
	c := startContainer(t, ns, img.mailserver, opts...)
	pid := waitMailServices(t, c, ns)

	// xapsd runs as the user xapsd with the fixed ids, and the host sees
	// those ids on the state and config folders.
	status := c.mustExec("cat", "/proc/"+pid+"/status")
	for _, field := range []string{"Uid", "Gid"} {
		want := fmt.Sprintf("%s:\t%d\t%d\t%d\t%d", field, xapsdUID, xapsdUID, xapsdUID, xapsdUID)
		if got := regexp.MustCompile(`(?m)^` + field + `:.*$`).FindString(status); got != want {
			t.Errorf("xapsd (pid %s) runs with %q, want %q", pid, got, want)
		}
	}
	if pw := c.mustExec("getent", "passwd", "xapsd"); !strings.HasPrefix(pw, fmt.Sprintf("xapsd:x:%d:%d:", xapsdUID, xapsdUID)) {
		t.Errorf("the image's xapsd user is %q, want uid and gid %d", strings.TrimSpace(pw), xapsdUID)
	}
	wantOwner(t, filepath.Join(state, "lib-xapsd"), xapsdUID, xapsdUID, 0o700)
	wantOwner(t, filepath.Join(config, "xapsd"), 0, xapsdUID, 0o750)
	wantOwner(t, filepath.Join(config, "xapsd", "push.key"), 0, xapsdUID, 0o640)

	// The checks of docs/docker-mailserver.md, "Start and check".
	c.mustExec("xapsd", "--check-config")
	if ready := c.mustExec("curl", "-s", "http://127.0.0.1:11621/readyz"); strings.TrimSpace(ready) != "ok" {
		t.Errorf("/readyz answered %q", ready)
	}

	// Two phones register, new mail arrives through Postfix.
	phones := map[string]string{token(1): acc, token(2): "ACC-SECOND-PHONE"}
	for tok, account := range phones {
		ios := imapLoginVia(t, ns.dial, "127.0.0.1:143", "alice@example.org")
		if caps, _ := ios.cmd("CAPABILITY"); !strings.Contains(strings.Join(caps, " "), "XAPPLEPUSHSERVICE") {
			t.Fatalf("no XAPPLEPUSHSERVICE after login: %q", caps)
		}
		if lines, ok := ios.registerLikeIOS(account, tok, "INBOX"); !ok || !strings.Contains(strings.Join(lines, "\n"), `aps-topic "`+topicA+`"`) {
			t.Fatalf("registration failed: %q", lines)
		}
	}
	// pushed waits for the next push to each phone after the first n.
	pushed := func(n int, what string) {
		t.Helper()
		reqs, err := apns.WaitRequests(n+len(phones), 30*time.Second)
		if err != nil {
			t.Fatalf("%s: %v\n%s", what, err, readFile(filepath.Join(logs, "xapsd.log")))
		}
		if got := perToken(reqs[n:]); got[token(1)] != 1 || got[token(2)] != 1 {
			t.Errorf("%s: pushes per token %v, want one to each phone", what, got)
		}
	}
	submitVia(t, ns.dial, "127.0.0.1:25", "alice@example.org")
	pushed(0, "mail delivered through Postfix")
	checkDevicesListSample(t, c.mustExec("xapsd", "devices", "list", "alice@example.org"))

	// A flag change from another client: xapsd holds its pushes back for
	// the configured delay (60 s), and podman stop comes first.
	desktop := imapLoginVia(t, ns.dial, "127.0.0.1:143", "alice@example.org")
	desktop.cmd("SELECT INBOX")
	if _, ok := desktop.cmd(`STORE 1 +FLAGS (\Seen)`); !ok {
		t.Fatal("STORE failed")
	}
	metrics := ns.httpClient()
	testutil.WaitWithin(t, 20*time.Second, "xapsd to hold back the flag change's push", func() bool {
		resp, err := metrics.Get("http://127.0.0.1:11621/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), "\nxapsd_scheduler_pending 2\n")
	})
	took, code := c.stop()
	t.Logf("podman stop of the mailserver container took %v", took.Round(10*time.Millisecond))
	if code != "0" || took >= 10*time.Second {
		t.Errorf("podman stop took %v and the container exited %s; want exit 0 within the 10 s before SIGKILL", took, code)
	}
	if reqs, err := apns.WaitRequests(4, time.Second); err != nil {
		t.Errorf("the held-back pushes were not sent when the container stopped: %v", err)
	} else if got := perToken(reqs[2:]); got[token(1)] != 1 || got[token(2)] != 1 {
		t.Errorf("pushes at the stop per token %v, want one to each phone", got)
	}
	supervisord := readFile(filepath.Join(logs, "supervisord.log"))
	checkSupervisordOrder(t, supervisord)
	if !strings.Contains(supervisord, "stopped: xapsd (exit status 0)") {
		t.Errorf("xapsd did not exit 0:\n%s", supervisord)
	}

	// A new container with the same volumes knows both phones.
	c2 := startContainer(t, ns, img.mailserver, opts...)
	waitMailServices(t, c2, ns)
	list := c2.mustExec("xapsd", "devices", "list", "alice@example.org")
	for tok := range phones {
		if !strings.Contains(list, tok) {
			t.Errorf("the registration of %s is gone after re-creating the container:\n%s", tok, list)
		}
	}
	submitVia(t, ns.dial, "127.0.0.1:25", "alice@example.org")
	pushed(4, "mail delivered after re-creating the container")
}

// startAPNsIn runs the APNs stand-in inside ns.
func startAPNsIn(t *testing.T, ns *netns) *fakeapns.Server {
	t.Helper()
	ln, err := ns.listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := fakeapns.Start(fakeapns.Options{Listener: ln})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// writeMailserverConfig fills the config volume: one account, and xapsd's
// folder as docs/docker-mailserver.md has the admin make it (its
// xapsd.yaml, a push credential, modes 0700 and 0600), with the APNs
// stand-in as endpoint and its CA.
func writeMailserverConfig(t *testing.T, config string, apns *fakeapns.Server) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(config, "postfix-accounts.cf"), []byte("alice@example.org|{PLAIN}secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(config, "xapsd")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	writeCredentials(t, dir, apns)
	yaml := docBlock(t, "../../docs/docker-mailserver.md", "`docker-data/dms/config/xapsd/xapsd.yaml`:") +
		fmt.Sprintf("\n# The test's: the APNs stand-in, and flag changes held back long enough.\napnsEndpoint: %s\ndelay: 60\n", apns.URL)
	if err := os.WriteFile(filepath.Join(dir, "xapsd.yaml"), []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeCredentials writes a push credential for topicA (push.pem and
// push.key) and the APNs stand-in's CA (apns-ca.pem) into dir, each 0600.
func writeCredentials(t *testing.T, dir string, apns *fakeapns.Server) {
	t.Helper()
	ca, err := testpki.NewCA("test push CA")
	if err != nil {
		t.Fatal(err)
	}
	writePushCert(t, ca, dir, "push", topicA)
	caFile := filepath.Join(dir, "apns-ca.pem")
	if err := apns.WriteCAFile(caFile); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(caFile, 0o600); err != nil {
		t.Fatal(err)
	}
}

var supervisorStatusRE = regexp.MustCompile(`(?m)^(\S+)\s+(\S+)\s+(?:pid (\d+))?`)

// waitMailServices waits until supervisord runs Dovecot, Postfix and xapsd
// and until SMTP and IMAP answer in ns, and returns xapsd's pid.
func waitMailServices(t *testing.T, c *ctr, ns *netns) string {
	t.Helper()
	var pid, last string
	testutil.WaitWithin(t, 90*time.Second, "Dovecot, Postfix and xapsd to be RUNNING", func() bool {
		// supervisorctl exits non-zero while a program is not running
		// (the finished start-mailserver.sh, too); the output is enough.
		last, _ = c.exec("supervisorctl", "status")
		running := map[string]string{}
		for _, m := range supervisorStatusRE.FindAllStringSubmatch(last, -1) {
			if m[2] == "RUNNING" {
				running[m[1]] = m[3]
			}
		}
		pid = running["xapsd"]
		return running["dovecot"] != "" && running["postfix"] != "" && pid != ""
	})
	// supervisord calls them running when they start (startsecs=0).
	for _, addr := range []string{"127.0.0.1:25", "127.0.0.1:143"} {
		testutil.WaitWithin(t, 30*time.Second, addr+" to answer", func() bool {
			conn, err := ns.dial("tcp", addr)
			if err == nil {
				conn.Close()
			}
			return err == nil
		})
	}
	return pid
}

// checkSupervisordOrder: supervisord started xapsd before Dovecot and
// Postfix, and stopped it after them, so that every delivery finds xapsd
// listening (docker-mailserver's programs have no priority; xapsd's
// configs/supervisord/xapsd.conf sets one).
func checkSupervisordOrder(t *testing.T, log string) {
	t.Helper()
	at := func(what string) int {
		i := strings.Index(log, what)
		if i < 0 {
			t.Fatalf("supervisord's log has no %q:\n%s", what, log)
		}
		return i
	}
	for _, service := range []string{"dovecot", "postfix"} {
		if at("spawned: 'xapsd'") > at("spawned: '"+service+"'") {
			t.Errorf("supervisord started %s before xapsd:\n%s", service, log)
		}
		if at("stopped: xapsd") < at("stopped: "+service) {
			t.Errorf("supervisord stopped xapsd before %s:\n%s", service, log)
		}
	}
}

// checkDevicesListSample compares the `xapsd devices list` sample of
// docs/docker-mailserver.md with the real output: the same columns, and a
// registration time written the way the command writes it (RFC 3339).
func checkDevicesListSample(t *testing.T, got string) {
	t.Helper()
	block := docBlock(t, "../../docs/docker-mailserver.md", "Check that the phone registered:")
	var sample []string
	for _, l := range strings.Split(block, "\n") {
		if s, ok := strings.CutPrefix(l, "# "); ok {
			sample = append(sample, s)
		}
	}
	real := strings.Split(strings.TrimSpace(got), "\n")
	if len(sample) != 2 || len(real) < 2 {
		t.Fatalf("devices list: want a header and rows in the docs and the output; docs:\n%s\noutput:\n%s", block, got)
	}
	columns := regexp.MustCompile(`\s{2,}`)
	for i := range 2 {
		s, r := columns.Split(sample[i], -1), columns.Split(real[i], -1)
		if len(s) != len(r) {
			t.Errorf("docs sample %q has %d columns, the command's %q %d", sample[i], len(s), real[i], len(r))
			continue
		}
		if i == 0 && strings.Join(s, " ") != strings.Join(r, " ") {
			t.Errorf("header: docs %q, command %q", sample[0], real[0])
		}
		if i == 1 {
			for _, row := range [][]string{s, r} {
				if _, err := time.Parse(time.RFC3339, row[3]); err != nil {
					t.Errorf("REGISTERED %q is not RFC 3339 (docs %q, command %q)", row[3], s[3], r[3])
				}
			}
		}
	}
}

// wantOwner checks a file's owner, group and permissions as the host sees
// them.
func wantOwner(t *testing.T, path string, uid, gid uint32, perm os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != uid || st.Gid != gid || fi.Mode().Perm() != perm {
		t.Errorf("%s: %d:%d %o, want %d:%d %o", path, st.Uid, st.Gid, fi.Mode().Perm(), uid, gid, perm)
	}
}

// readFile is the file's content, or why there is none.
func readFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return string(b)
}
