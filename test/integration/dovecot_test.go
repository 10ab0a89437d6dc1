package integration

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
)

// The end-to-end path with real components: a real Dovecot with our plugin,
// the built xapsd, and an HTTP/2 TLS stand-in for APNs. Every test runs
// against this machine's Dovecot (Debian 12's 2.3.19) and against the
// Dovecot in each root of test/dovecot-roots that test/deps.sh prepares
// (built and run there with chroot; a chroot shares the host's network).
// Dovecot must run as root (it switches to the mail user), as in CI.

const mailUID = 4242 // needs no /etc/passwd entry

// dovecotKind is one Dovecot the tests run against.
type dovecotKind struct {
	name string // its version, or the root's folder name when it is missing
	root string // "" for this machine's Dovecot
	// missing says why the root cannot be used (the tests skip it).
	missing string
}

// dovecotRoot is one line of test/dovecot-roots.
type dovecotRoot struct {
	name, suite, clean string
}

// dovecotRoots reads test/dovecot-roots: the roots with a Dovecot of the
// test matrix, and for each the clean root of its release.
func dovecotRoots(t *testing.T) []dovecotRoot {
	t.Helper()
	var roots []dovecotRoot
	for _, line := range strings.Split(string(mustRead(t, "../dovecot-roots")), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if len(f) != 3 {
			t.Fatalf("test/dovecot-roots: %q is not ROOT SUITE CLEAN", line)
		}
		roots = append(roots, dovecotRoot{name: f[0], suite: f[1], clean: f[2]})
	}
	return roots
}

// dovecotKinds is this machine's Dovecot and the one in each root.
func dovecotKinds(t *testing.T) []dovecotKind {
	t.Helper()
	kinds := []dovecotKind{{name: dovecotVersion(t, "")}}
	for _, r := range dovecotRoots(t) {
		root := filepath.Join(rootCache(), r.name)
		if _, err := os.Stat(filepath.Join(root, "usr/sbin/dovecot")); err != nil {
			kinds = append(kinds, dovecotKind{name: r.name, root: root,
				missing: fmt.Sprintf("no Dovecot root at %s (test/deps.sh makes it)", root)})
			continue
		}
		kinds = append(kinds, dovecotKind{name: dovecotVersion(t, root), root: root})
	}
	return kinds
}

// dovecotVersion is what `dovecot --version` says, without Debian's
// revision or the commit: 2.4.1-4 (7d8c0e5759) is 2.4.1.
func dovecotVersion(t *testing.T, root string) string {
	t.Helper()
	out, err := exec.Command("chroot", "/"+root, "dovecot", "--version").Output()
	if err != nil {
		t.Fatalf("dovecot --version in %q: %v", "/"+root, err)
	}
	v := strings.Fields(string(out))[0]
	return strings.SplitN(v, "-", 2)[0]
}

// forEachDovecot runs test once per Dovecot (dovecotKinds), each as a
// subtest named after its version (dovecot2.4.5). A root that is missing
// is skipped with a message saying how to get it.
func forEachDovecot(t *testing.T, test func(t *testing.T, dv dovecotKind)) {
	for _, kind := range dovecotKinds(t) {
		t.Run("dovecot"+kind.name, func(t *testing.T) {
			if kind.missing != "" {
				t.Skipf("SKIPPED: %s", kind.missing)
			}
			test(t, kind)
		})
	}
}

// pluginBuild is the plugin built for one Dovecot, once per test run
// (dovecot/test/build-in-root.sh builds from scratch); each test stages a
// copy of the modules.
type pluginBuild struct {
	once sync.Once
	dir  string // lib25_xaps_*_plugin.so, and settings/ with a settings module
	// framework: the plugin reads its settings through Dovecot's settings
	// framework (2.4's configuration), not from plugin { } (2.3's).
	framework bool
	moduledir string // Dovecot's module folder (in its root)
	err       error
}

var (
	pluginBuildsMu sync.Mutex
	pluginBuilds   = map[string]*pluginBuild{} // by root
	pluginBuildDir string                      // made and removed by TestMain
)

// plugin builds the plugin for kind's Dovecot, or returns the build made
// for an earlier test.
func (kind dovecotKind) plugin(t *testing.T) *pluginBuild {
	t.Helper()
	pluginBuildsMu.Lock()
	b := pluginBuilds[kind.root]
	if b == nil {
		b = &pluginBuild{}
		pluginBuilds[kind.root] = b
	}
	pluginBuildsMu.Unlock()
	b.once.Do(func() {
		b.dir, b.err = os.MkdirTemp(pluginBuildDir, "plugin-")
		if b.err != nil {
			return
		}
		out, err := exec.Command("../../dovecot/test/build-in-root.sh", "/"+kind.root, b.dir).Output()
		if err != nil {
			b.err = fmt.Errorf("build the plugin for %s: %v\n%s", kind.name, err, stderrOf(err))
			return
		}
		// "key value" lines: version, settings, moduledir, libexecdir.
		for _, line := range strings.Split(string(out), "\n") {
			key, value, _ := strings.Cut(line, " ")
			switch key {
			case "settings":
				b.framework = value == "framework"
			case "moduledir":
				b.moduledir = value
			}
		}
		if b.moduledir == "" {
			b.err = fmt.Errorf("build-in-root.sh for %s said no moduledir:\n%s", kind.name, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b
}

// stderrOf is what a failed command wrote to its standard error.
func stderrOf(err error) []byte {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.Stderr
	}
	return nil
}

// inRoot is the command that runs argv in kind's root with this build's
// settings module, if it has one, mounted over the root's (in-root.sh).
func (b *pluginBuild) inRoot(kind dovecotKind, argv ...string) []string {
	cmd := []string{"../../dovecot/test/in-root.sh", "/" + kind.root}
	if _, err := os.Stat(filepath.Join(b.dir, "settings")); err == nil {
		cmd = append(cmd, "--bind", filepath.Join(b.dir, "settings"), b.moduledir+"/settings")
	}
	return append(cmd, argv...)
}

// stagePlugin copies the plugin built for kind's Dovecot into dir.
func stagePlugin(t *testing.T, kind dovecotKind, dir string) *pluginBuild {
	t.Helper()
	b := kind.plugin(t)
	for _, so := range []string{"lib25_xaps_imap_plugin.so", "lib25_xaps_push_notification_plugin.so"} {
		data, err := os.ReadFile(filepath.Join(b.dir, so))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, so), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

type dovecotEnv struct {
	dir    string // the test folder on the host
	inside string // the test folder as Dovecot sees it
	// inRoot runs a command the way Dovecot runs (in-root.sh: in the root,
	// with this run's settings module); doveadm needs that too.
	inRoot func(argv ...string) []string
	imap   string
	lmtp   string
	cmd    *exec.Cmd
	done   chan struct{}
	dial   dialFunc // reaches imap and lmtp (in the network namespace, if any)
}

// dialFunc opens a connection, like net.Dial.
type dialFunc func(network, addr string) (net.Conn, error)

func dialDirect(network, addr string) (net.Conn, error) {
	return net.DialTimeout(network, addr, 5*time.Second)
}

// dovecotOptions change what startDovecotWith runs.
type dovecotOptions struct {
	xapsURL string            // for the test configuration's xaps settings
	snippet string            // a shipped 95-xaps.conf used instead of those settings
	userdb  map[string]string // extra userdb fields per user
	netns   *netns            // run Dovecot in this network namespace
	users   []string          // more users, besides alice, bob, carol and erin
}

// xapsSettings is the part of the test configurations (dovecot/test)
// that a shipped snippet replaces.
var xapsSettings = regexp.MustCompile(`(?s)# BEGIN xaps settings.*# END xaps settings\n`)

func startDovecotWith(t *testing.T, kind dovecotKind, o dovecotOptions) *dovecotEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the Dovecot end-to-end tests must run as root (Dovecot switches to the mail user); CI runs them as root")
	}
	if _, err := exec.LookPath("dovecot"); err != nil && kind.root == "" {
		t.Fatal("dovecot not installed: apt-get install dovecot-core dovecot-imapd dovecot-lmtpd dovecot-dev (.ci/run does)")
	}
	// Short: Unix socket paths under base_dir are limited to 107 bytes.
	dir, err := os.MkdirTemp(kind.root+"/tmp", "xe2e-")
	if err != nil {
		t.Fatal(err)
	}
	inside := strings.TrimPrefix(dir, kind.root) // the folder as Dovecot sees it
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	// erin's home stays root's: deliveries to her fail at DATA, as on a
	// full disk or a broken home.
	users := append([]string{"alice", "bob", "carol", "erin"}, o.users...)
	for _, d := range []string{"run", "state", "modules", "home"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	os.Chown(filepath.Join(dir, "home"), mailUID, mailUID)
	for _, u := range users {
		os.MkdirAll(filepath.Join(dir, "home", u), 0o755)
		if u != "erin" {
			os.Chown(filepath.Join(dir, "home", u), mailUID, mailUID)
		}
	}
	e := &dovecotEnv{dir: dir, inside: inside, done: make(chan struct{}), dial: dialDirect}
	plugin := stagePlugin(t, kind, filepath.Join(dir, "modules"))
	e.inRoot = func(argv ...string) []string { return plugin.inRoot(kind, argv...) }
	mods, _ := filepath.Glob(kind.root + plugin.moduledir + "/*.so")
	for _, m := range mods {
		if !strings.HasPrefix(filepath.Base(m), "lib25_xaps_") {
			os.Symlink(plugin.moduledir+"/"+filepath.Base(m), filepath.Join(dir, "modules", filepath.Base(m)))
		}
	}
	var passwd strings.Builder
	for _, u := range users {
		extra := o.userdb[u]
		if u == "bob" {
			extra = strings.TrimSpace("userdb_xaps_alias=bob@alias.example " + extra)
		}
		fmt.Fprintf(&passwd, "%s:{PLAIN}secret:%d:%d::%s/home/%s::%s\n", u, mailUID, mailUID, inside, u, extra)
	}
	os.WriteFile(filepath.Join(dir, "users"), []byte(passwd.String()), 0o644)
	// The plugin's copy of the secret xapsd checks (newE2E).
	os.WriteFile(filepath.Join(dir, "xaps.secret"), []byte(e2eSecret+"\n"), 0o600)

	if o.netns != nil {
		e.dial = o.netns.dial
	}
	imapPort, lmtpPort := testutil.MustFreePort(t), testutil.MustFreePort(t)
	e.imap, e.lmtp = fmt.Sprintf("127.0.0.1:%d", imapPort), fmt.Sprintf("127.0.0.1:%d", lmtpPort)
	// The configurations the plugin's own checks use (dovecot/test).
	template := "../../dovecot/test/dovecot.conf.in"
	if plugin.framework {
		template = "../../dovecot/test/dovecot24.conf.in"
	}
	conf := strings.NewReplacer("@TMP@", inside, "@IMAP_PORT@", fmt.Sprint(imapPort),
		"@LMTP_PORT@", fmt.Sprint(lmtpPort), "@XAPS_URL@", o.xapsURL).Replace(string(mustRead(t, template)))
	if o.snippet != "" {
		if !xapsSettings.MatchString(conf) {
			t.Fatalf("%s has no BEGIN/END xaps settings markers", template)
		}
		os.WriteFile(filepath.Join(dir, "95-xaps.conf"), mustRead(t, o.snippet), 0o644)
		conf = xapsSettings.ReplaceAllLiteralString(conf, "!include "+inside+"/95-xaps.conf\n")
	}
	os.WriteFile(filepath.Join(dir, "dovecot.conf"), []byte(conf), 0o644)
	// A private mount namespace gives a root a /proc and Dovecot this
	// run's settings module, both gone with the test.
	argv := plugin.inRoot(kind, "dovecot", "-F", "-c", inside+"/dovecot.conf")
	if o.netns != nil {
		argv = o.netns.argv(argv...)
	}
	e.cmd = exec.Command(argv[0], argv[1:]...)
	e.cmd.Stdout, e.cmd.Stderr = os.Stderr, os.Stderr
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { e.cmd.Wait(); close(e.done) }()
	t.Cleanup(func() {
		testutil.StopProcess(e.cmd.Process, e.done, syscall.SIGTERM, 10*time.Second)
		logData, _ := os.ReadFile(filepath.Join(dir, "dovecot.log"))
		for _, bad := range []string{"Panic:", "Fatal:", "killed with signal"} {
			if strings.Contains(string(logData), bad) {
				t.Errorf("Dovecot log has %q", bad)
			}
		}
		if t.Failed() {
			t.Logf("dovecot.log:\n%s", logData)
		}
	})
	for _, addr := range []string{e.imap, e.lmtp} {
		err := testutil.WaitStarted(e.done, 15*time.Second, func() bool {
			c, err := e.dial("tcp", addr)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		switch {
		case errors.Is(err, testutil.ErrExited):
			t.Fatalf("Dovecot %s exited during start:\n%s", kind.name, mustRead(t, filepath.Join(dir, "dovecot.log")))
		case err != nil:
			t.Fatalf("Dovecot does not listen on %s", addr)
		}
	}
	return e
}

// imapConn is just enough IMAP to act like iOS Mail and another client.
type imapConn struct {
	t   *testing.T
	c   net.Conn
	r   *bufio.Reader
	tag int
}

func imapLogin(t *testing.T, addr, user string) *imapConn {
	t.Helper()
	return imapLoginVia(t, dialDirect, addr, user)
}

func imapLoginVia(t *testing.T, dial dialFunc, addr, user string) *imapConn {
	t.Helper()
	c, err := dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ic := &imapConn{t: t, c: c, r: bufio.NewReader(c)}
	ic.line() // greeting
	if _, ok := ic.cmd("LOGIN " + user + " secret"); !ok {
		t.Fatalf("LOGIN %s failed", user)
	}
	return ic
}

func (ic *imapConn) line() string {
	ic.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	l, err := ic.r.ReadString('\n')
	if err != nil {
		ic.t.Fatalf("IMAP read: %v", err)
	}
	return strings.TrimRight(l, "\r\n")
}

// cmd sends one command and returns the untagged lines and whether the
// tagged answer was OK; the tagged line is the last element.
func (ic *imapConn) cmd(c string) ([]string, bool) {
	ic.tag++
	tag := fmt.Sprintf("x%d", ic.tag)
	fmt.Fprintf(ic.c, "%s %s\r\n", tag, c)
	var lines []string
	for {
		l := ic.line()
		lines = append(lines, l)
		if strings.HasPrefix(l, tag+" ") {
			return lines, strings.HasPrefix(l, tag+" OK")
		}
	}
}

// registerLikeIOS sends the command exactly as iOS Mail builds it.
func (ic *imapConn) registerLikeIOS(account, tok string, mailboxes ...string) ([]string, bool) {
	q := make([]string, len(mailboxes))
	for i, m := range mailboxes {
		q[i] = `"` + m + `"`
	}
	return ic.cmd(fmt.Sprintf(`XAPPLEPUSHSERVICE "aps-version" "2" "aps-account-id" "%s" "aps-device-token" "%s" "aps-subtopic" "com.apple.mobilemail" "mailboxes" (%s)`,
		account, tok, strings.Join(q, " ")))
}

// deliver sends one message over LMTP and fails the test unless it was
// accepted.
func deliver(t *testing.T, addr, rcpt string) {
	t.Helper()
	deliverVia(t, dialDirect, addr, rcpt)
}

func deliverVia(t *testing.T, dial dialFunc, addr, rcpt string) {
	t.Helper()
	sendMail(t, dial, addr, "LHLO", rcpt)
}

// submitVia sends one message over SMTP (to Postfix, say) and fails the
// test unless it was accepted.
func submitVia(t *testing.T, dial dialFunc, addr, rcpt string) {
	t.Helper()
	sendMail(t, dial, addr, "EHLO", rcpt)
}

// sendMail is one LMTP (hello "LHLO") or SMTP ("EHLO") transaction with
// one recipient.
func sendMail(t *testing.T, dial dialFunc, addr, hello, rcpt string) {
	t.Helper()
	c, err := dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	expect := func(code string) {
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("%s to %s: %v", hello, addr, err)
			}
			if !strings.HasPrefix(l, code) {
				t.Fatalf("%s to %s: got %q, want %s", hello, addr, strings.TrimSpace(l), code)
			}
			if len(l) > 3 && l[3] == ' ' {
				return
			}
		}
	}
	expect("220")
	fmt.Fprintf(c, "%s test.example\r\n", hello)
	expect("250")
	fmt.Fprintf(c, "MAIL FROM:<sender@example.net>\r\n")
	expect("250")
	fmt.Fprintf(c, "RCPT TO:<%s>\r\n", rcpt)
	expect("250")
	fmt.Fprintf(c, "DATA\r\n")
	expect("354")
	fmt.Fprintf(c, "From: sender@example.net\r\nTo: %s\r\nSubject: hello\r\nMessage-ID: <%d@example.net>\r\n\r\nHi.\r\n.\r\n", rcpt, time.Now().UnixNano())
	expect("250")
	fmt.Fprintf(c, "QUIT\r\n")
}

// e2e is the whole chain: Dovecot + plugin -> xapsd -> APNs stand-in.
type e2e struct {
	*apnsEnv
	dc *dovecotEnv
}

// e2eSecret is shared by xapsd (pluginSecretFile) and the plugin
// (xaps_secret / xaps_secret_file in the test configurations): every
// request of the end-to-end tests is authenticated.
const e2eSecret = "e2e-secret-0123456789abcdef"

// newE2E runs the daemon on ::1 alone and points the plugin at
// http://[::1]:port; TestE2EShippedSnippetAndSampleConfig covers the
// default, both loopbacks, with the shipped files.
func newE2E(t *testing.T, kind dovecotKind, extra string) *e2e {
	t.Helper()
	return newE2EWith(t, kind, extra, "", dovecotOptions{})
}

// newE2EWithURLPath is newE2E with path (and query) appended to the
// plugin's URL.
func newE2EWithURLPath(t *testing.T, kind dovecotKind, extra, path string) *e2e {
	t.Helper()
	return newE2EWith(t, kind, extra, path, dovecotOptions{})
}

// newE2EWith is newE2EWithURLPath with more Dovecot options (their xapsURL
// is set here).
func newE2EWith(t *testing.T, kind dovecotKind, extra, path string, o dovecotOptions) *e2e {
	t.Helper()
	secret := filepath.Join(testutil.TempDir(t), "plugin.secret")
	if err := os.WriteFile(secret, []byte(e2eSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := newAPNsEnv(t, "delay: 2\ncheckInterval: 1\nlistenAddr: ::1\npluginSecretFile: "+secret+"\n"+extra)
	_, port, _ := net.SplitHostPort(a.addr)
	o.xapsURL = "http://[::1]:" + port + path
	return &e2e{apnsEnv: a, dc: startDovecotWith(t, kind, o)}
}

func tagless(l string) string {
	// Dovecot appends " (0.001 + 0.000 secs)." to tagged replies.
	if i := strings.Index(l, " ("); i > 0 && strings.HasSuffix(l, "secs).") {
		return l[:i]
	}
	return l
}

func TestE2ERegisterAndNewMail(t *testing.T) { forEachDovecot(t, testE2ERegisterAndNewMail) }

func testE2ERegisterAndNewMail(t *testing.T, dv dovecotKind) {
	e := newE2E(t, dv, "")
	ios := imapLogin(t, e.dc.imap, "alice")
	caps, _ := ios.cmd("CAPABILITY")
	if !strings.Contains(strings.Join(caps, " "), "XAPPLEPUSHSERVICE") {
		t.Fatalf("no XAPPLEPUSHSERVICE capability after login: %v", caps)
	}
	ios.cmd("CREATE Notes")
	lines, ok := ios.registerLikeIOS(acc, token(1), "INBOX", "Notes", "Missing")
	if !ok {
		t.Fatalf("registration failed: %v", lines)
	}
	want := []string{`* XAPPLEPUSHSERVICE mailbox "INBOX"`, `* XAPPLEPUSHSERVICE mailbox "Notes"`,
		`* XAPPLEPUSHSERVICE aps-version "2" aps-topic "` + topicA + `"`, "x4 OK XAPPLEPUSHSERVICE completed"}
	if len(lines) != len(want) {
		t.Fatalf("reply %q, want %q", lines, want)
	}
	for i := range want {
		if tagless(lines[i]) != want[i] {
			t.Errorf("line %d = %q, want %q", i, lines[i], want[i])
		}
	}

	sent := time.Now()
	deliver(t, e.dc.lmtp, "alice@example.org")
	reqs, err := e.apns.WaitRequests(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	r := reqs[0]
	t.Logf("push reached APNs %v after the LMTP DATA", r.Received.Sub(sent))
	if r.Token != token(1) || r.Topic != topicA || r.PushType != "background" || r.Expiration == "" ||
		string(r.Body) != `{"aps":{"account-id":"`+acc+`"}}` || r.ClientCertSubjectUID != topicA {
		t.Errorf("push %+v", r)
	}
	if r.Received.Sub(sent) > time.Second {
		t.Errorf("new-mail push took %v; it must not wait for the debounce delay", r.Received.Sub(sent))
	}
}

// An admin's URL with a path (and a query), as in http://host:11619/xaps/:
// the plugin replaces it, so registration and pushes work with xapsd,
// which answers only /register and /notify (Dovecot 2.4.5 sent both to the
// URL's own path). newE2E's URL has no path.
func TestE2EURLWithPath(t *testing.T) { forEachDovecot(t, testE2EURLWithPath) }

func testE2EURLWithPath(t *testing.T, dv dovecotKind) {
	e := newE2EWithURLPath(t, dv, "", "/xaps/?from=dovecot")
	ios := imapLogin(t, e.dc.imap, "alice")
	if lines, ok := ios.registerLikeIOS(acc, token(1), "INBOX"); !ok {
		t.Fatalf("registration with a path in the URL failed: %q", lines)
	}
	deliver(t, e.dc.lmtp, "alice@example.org")
	reqs, err := e.apns.WaitRequests(1, 5*time.Second)
	if err != nil {
		t.Fatalf("no push with a path in the URL: %v", err)
	}
	if reqs[0].Token != token(1) {
		t.Errorf("push %+v", reqs[0])
	}
}

// waitPushes waits until tok has had n pushes.
func (e *e2e) waitPushes(t *testing.T, tok string, n int, timeout time.Duration) {
	t.Helper()
	testutil.WaitWithin(t, timeout, fmt.Sprintf("push %d to %s", n, tok), func() bool { return perToken(e.apns.Requests())[tok] >= n })
}

// carolsPhone registers carol's phone through IMAP and delivers her a
// mail: her push is a later event, for a test that proves a push for
// someone else did not happen.
func (e *e2e) carolsPhone(t *testing.T) {
	t.Helper()
	if _, ok := imapLogin(t, e.dc.imap, "carol").registerLikeIOS("ACC-CAROL", token(3), "INBOX"); !ok {
		t.Fatal("carol's registration failed")
	}
	deliver(t, e.dc.lmtp, "carol@example.org")
	e.waitPushes(t, token(3), 1, 5*time.Second)
}

func TestE2EFlagChangeIsOneDelayedPush(t *testing.T) {
	forEachDovecot(t, testE2EFlagChangeIsOneDelayedPush)
}

func testE2EFlagChangeIsOneDelayedPush(t *testing.T, dv dovecotKind) {
	e := newE2E(t, dv, "")
	ios := imapLogin(t, e.dc.imap, "alice")
	if _, ok := ios.registerLikeIOS(acc, token(1), "INBOX"); !ok {
		t.Fatal("registration failed")
	}
	deliver(t, e.dc.lmtp, "alice@example.org")
	deliver(t, e.dc.lmtp, "alice@example.org")
	if _, err := e.apns.WaitRequests(2, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	desktop := imapLogin(t, e.dc.imap, "alice")
	desktop.cmd("SELECT INBOX")
	changed := time.Now()
	if _, ok := desktop.cmd(`STORE 1:* +FLAGS (\Seen \Flagged)`); !ok {
		t.Fatal("STORE failed")
	}
	reqs, err := e.apns.WaitRequests(3, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if d := reqs[2].Received.Sub(changed); d < 500*time.Millisecond {
		t.Fatalf("a push %v after the flag change; it must be delayed", d)
	}
	if d := reqs[2].Received.Sub(changed); d < 2*time.Second {
		t.Errorf("delayed push after %v, before the 2 s delay", d)
	}
	// A second push for the two flag changes would be due before one
	// for a flag change made now: carol's is the later event.
	e.carolsPhone(t)
	carol := imapLogin(t, e.dc.imap, "carol")
	carol.cmd("SELECT INBOX")
	if _, ok := carol.cmd(`STORE 1 +FLAGS (\Seen)`); !ok {
		t.Fatal("carol's STORE failed")
	}
	e.waitPushes(t, token(3), 2, 10*time.Second)
	if n := perToken(e.apns.Requests())[token(1)]; n != 3 {
		t.Errorf("%d pushes; flag changes on two messages must make one push", n)
	}
}

func TestE2ETwoDevicesWithOneAccountID(t *testing.T) {
	forEachDovecot(t, testE2ETwoDevicesWithOneAccountID)
}

func testE2ETwoDevicesWithOneAccountID(t *testing.T, dv dovecotKind) {
	e := newE2E(t, dv, "")
	for _, tok := range []string{token(1), token(2)} {
		if _, ok := imapLogin(t, e.dc.imap, "alice").registerLikeIOS(acc, tok, "INBOX"); !ok {
			t.Fatal("registration failed")
		}
	}
	deliver(t, e.dc.lmtp, "alice@example.org")
	reqs, err := e.apns.WaitRequests(2, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := map[string]bool{reqs[0].Token: true, reqs[1].Token: true}; !got[token(1)] || !got[token(2)] {
		t.Errorf("pushed %v, want both phones", got)
	}
}

func TestE2EOtherFolders(t *testing.T) { forEachDovecot(t, testE2EOtherFolders) }

func testE2EOtherFolders(t *testing.T, dv dovecotKind) {
	e := newE2E(t, dv, "")
	ios := imapLogin(t, e.dc.imap, "alice")
	ios.cmd("CREATE Lists")
	if _, ok := ios.registerLikeIOS(acc, token(1), "INBOX", "Lists"); !ok {
		t.Fatal("registration failed")
	}
	deliver(t, e.dc.lmtp, "alice+Lists@example.org")
	if _, err := e.apns.WaitRequests(1, 5*time.Second); err != nil {
		t.Fatalf("pushMailboxes registered: no push for a registered folder: %v", err)
	}

	// The old daemon's rule: INBOX only.
	e.d.stop()
	os.WriteFile(filepath.Join(e.dir, "xapsd.yaml"), append(mustRead(t, filepath.Join(e.dir, "xapsd.yaml")), []byte("pushMailboxes: inbox\n")...), 0o600)
	e.d = startDaemon(t, e.dir, e.addr, e.caEnv)
	deliver(t, e.dc.lmtp, "alice+Lists@example.org")
	// A push for Lists would go out before one for a later delivery:
	// carol's is the later event.
	e.carolsPhone(t)
	if n := perToken(e.apns.Requests())[token(1)]; n != 1 {
		t.Errorf("pushMailboxes inbox: %d pushes, want no new one for Lists", n)
	}
	deliver(t, e.dc.lmtp, "alice@example.org")
	if !testutil.Wait(5*time.Second, func() bool { return perToken(e.apns.Requests())[token(1)] >= 2 }) {
		t.Errorf("pushMailboxes inbox: no push for INBOX")
	}
}

func TestE2EDaemonDown(t *testing.T) { forEachDovecot(t, testE2EDaemonDown) }

func testE2EDaemonDown(t *testing.T, dv dovecotKind) {
	e := newE2E(t, dv, "")
	e.d.stop()
	ios := imapLogin(t, e.dc.imap, "alice")
	lines, ok := ios.registerLikeIOS(acc, token(1), "INBOX")
	last := lines[len(lines)-1]
	if ok || !strings.Contains(last, " NO ") {
		t.Errorf("registration with xapsd stopped answered %q, want NO", last)
	}
	if _, ok := ios.cmd("NOOP"); !ok {
		t.Error("the IMAP session did not carry on after the failed registration")
	}
	deliver(t, e.dc.lmtp, "alice@example.org") // fails the test unless accepted
	box, _ := ios.cmd("STATUS INBOX (MESSAGES)")
	if !strings.Contains(strings.Join(box, " "), "MESSAGES 1") {
		t.Errorf("message not delivered: %v", box)
	}
}

func TestE2EUserLookupAlias(t *testing.T) { forEachDovecot(t, testE2EUserLookupAlias) }

func testE2EUserLookupAlias(t *testing.T, dv dovecotKind) {
	e := newE2E(t, dv, "")
	if _, ok := imapLogin(t, e.dc.imap, "bob").registerLikeIOS("ACC-BOB", token(5), "INBOX"); !ok {
		t.Fatal("registration failed")
	}
	code, out, errOut := run(t, "", "--config", filepath.Join(e.dir, "xapsd.yaml"), "devices", "list", "bob@alias.example")
	if code != 0 || !strings.Contains(out, token(5)) {
		t.Fatalf("bob registered under another name: %d %s %s", code, out, errOut)
	}
	deliver(t, e.dc.lmtp, "bob@example.org")
	reqs, err := e.apns.WaitRequests(1, 5*time.Second)
	if err != nil || reqs[0].Token != token(5) {
		t.Fatalf("alias user got no push: %v %+v", err, reqs)
	}
	// Admin tools against the running daemon: test-push shows Apple's answer.
	e.apns.SetResponder(func(fakeapns.Request) fakeapns.Response {
		return fakeapns.Response{Status: 400, Reason: "TopicDisallowed"}
	})
	code, out, _ = run(t, "", "--config", filepath.Join(e.dir, "xapsd.yaml"), "test-push", "bob@alias.example")
	if code != 1 || !strings.Contains(out, "TopicDisallowed") || !strings.Contains(out, token(5)) {
		t.Errorf("test-push: %d %q", code, out)
	}
}

// lmtpTransaction delivers one message to several recipients in one LMTP
// transaction and returns the reply code after DATA for each accepted
// recipient, 0 where the connection closed before that reply.
func lmtpTransaction(t *testing.T, addr, subject string, rcpts ...string) []int {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReader(c)
	reply := func() int {
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return 0
			}
			if len(l) > 3 && l[3] == ' ' {
				code := 0
				fmt.Sscanf(l, "%d", &code)
				return code
			}
		}
	}
	cmd := func(line string) int {
		fmt.Fprintf(c, "%s\r\n", line)
		return reply()
	}
	reply()
	cmd("LHLO test.example")
	cmd("MAIL FROM:<sender@example.net>")
	for _, rc := range rcpts {
		if code := cmd("RCPT TO:<" + rc + ">"); code != 250 {
			t.Fatalf("RCPT TO:<%s> = %d", rc, code)
		}
	}
	if code := cmd("DATA"); code != 354 {
		t.Fatalf("DATA = %d", code)
	}
	fmt.Fprintf(c, "From: sender@example.net\r\nTo: %s\r\nSubject: %s\r\n\r\nHi.\r\n.\r\n",
		strings.Join(rcpts, ", "), subject)
	codes := make([]int, len(rcpts))
	for i := range codes {
		if codes[i] = reply(); codes[i] == 0 {
			break
		}
	}
	cmd("QUIT")
	return codes
}

// copies counts the messages with this subject in a user's maildir.
func (e *dovecotEnv) copies(user, subject string) int {
	n := 0
	for _, sub := range []string{"new", "cur"} {
		files, _ := filepath.Glob(filepath.Join(e.dir, "home", user, "Maildir", sub, "*"))
		for _, f := range files {
			data, _ := os.ReadFile(f)
			if strings.Contains(string(data), "\nSubject: "+subject+"\n") {
				n++
			}
		}
	}
	return n
}

// Several recipients in one LMTP transaction, with xapsd answering, stopped
// (SIGSTOP: connections are accepted, nothing answers) and down: each
// recipient gets exactly one reply and one copy, and the ones that were
// saved are pushed when xapsd is up. A crash of the LMTP process here makes
// the MTA deliver the whole transaction again. The Dovecot log is checked
// for panics and killed processes when the test ends.
func TestE2EMultiRecipientLMTP(t *testing.T) { forEachDovecot(t, testE2EMultiRecipientLMTP) }

func testE2EMultiRecipientLMTP(t *testing.T, dv dovecotKind) {
	e := newE2E(t, dv, "")
	tokens := map[string]string{"alice": token(1), "bob": token(2), "carol": token(3)}
	for _, u := range []string{"alice", "bob", "carol"} {
		if _, ok := imapLogin(t, e.dc.imap, u).registerLikeIOS("ACC-"+u, tokens[u], "INBOX"); !ok {
			t.Fatalf("registration of %s failed", u)
		}
	}
	serial := 0
	transaction := func(state string, users ...string) {
		t.Helper()
		serial++
		subject := fmt.Sprintf("multi %d", serial)
		var rcpts []string
		for _, u := range users {
			rcpts = append(rcpts, u+"@example.org")
		}
		before := e.apns.Count()
		codes := lmtpTransaction(t, e.dc.lmtp, subject, rcpts...)
		var pushed []string
		for i, u := range users {
			want, copies := 250, 1
			if u == "erin" {
				want, copies = 451, 0
			}
			if codes[i] != want {
				t.Errorf("%s, %v: reply for %s = %d, want %d (all: %v)", state, users, u, codes[i], want, codes)
			}
			if n := e.dc.copies(u, subject); n != copies {
				t.Errorf("%s, %v: %s has %d copies, want %d", state, users, u, n, copies)
			}
			if copies == 1 {
				pushed = append(pushed, tokens[u])
			}
		}
		if state != "answers" {
			return
		}
		reqs, err := e.apns.WaitRequests(int(before)+len(pushed), 10*time.Second)
		if err != nil {
			t.Fatalf("%s, %v: %v", state, users, err)
		}
		got := perToken(reqs[before:])
		for _, tok := range pushed {
			if got[tok] != 1 {
				t.Errorf("%s, %v: pushes per token %v, want one for each saved recipient", state, users, got)
				break
			}
		}
	}
	sets := [][]string{{"alice", "bob"}, {"alice", "bob", "carol"}, {"alice", "erin"}, {"alice", "erin", "bob"}}
	for _, users := range sets {
		transaction("answers", users...)
	}
	e.d.signal(syscall.SIGSTOP)
	for _, users := range sets {
		transaction("stopped", users...)
	}
	e.d.signal(syscall.SIGCONT)
	e.d.stop()
	for _, users := range sets {
		transaction("down", users...)
	}
}

// writeMessages puts n small messages straight into a user's Maildir, as
// another program would; Dovecot finds them at the next SELECT.
func (e *dovecotEnv) writeMessages(t *testing.T, user string, n int) {
	t.Helper()
	maildir := filepath.Join(e.dir, "home", user, "Maildir")
	for _, sub := range []string{"", "cur", "new", "tmp"} {
		os.MkdirAll(filepath.Join(maildir, sub), 0o700)
		os.Chown(filepath.Join(maildir, sub), mailUID, mailUID)
	}
	for i := 0; i < n; i++ {
		name := filepath.Join(maildir, "cur", fmt.Sprintf("%d.M%dP1.bulk:2,", 1700000000+i, i))
		msg := fmt.Sprintf("From: sender@example.net\nSubject: bulk %d\n\nHi.\n", i)
		if err := os.WriteFile(name, []byte(msg), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chown(name, mailUID, mailUID)
	}
}

// doveadm runs doveadm with the test configuration the way Dovecot runs (in
// the root, if any, with this run's settings module) and returns its
// combined output, which is where it logs.
func (e *dovecotEnv) doveadm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	argv := e.inRoot(append([]string{"doveadm", "-c", e.inside + "/dovecot.conf"}, args...)...)
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	return string(out), err
}

// notifyLog matches the daemon's debug line for a /notify it handled.
var notifyLog = regexp.MustCompile(`msg=notify .*events="\[([^]]*)\]" mailbox=(\S+) user=(\S+)`)

// notifies returns the events of each /notify the daemon handled for user
// and mailbox, in order.
func (d *daemon) notifies(user, mailbox string) [][]string {
	var got [][]string
	for _, m := range notifyLog.FindAllStringSubmatch(d.log.String(), -1) {
		if m[2] == mailbox && m[3] == user {
			got = append(got, strings.Fields(m[1]))
		}
	}
	return got
}

// A STORE and an EXPUNGE over thousands of messages are a few /notify (one
// per command and mailbox), and the daemon pushes once, after its delay.
func TestE2EBulkChangeIsFewNotifiesAndOneDelayedPush(t *testing.T) {
	forEachDovecot(t, testE2EBulkChangeIsFewNotifiesAndOneDelayedPush)
}

func testE2EBulkChangeIsFewNotifiesAndOneDelayedPush(t *testing.T, dv dovecotKind) {
	e := newE2E(t, dv, "")
	if _, ok := imapLogin(t, e.dc.imap, "alice").registerLikeIOS(acc, token(1), "INBOX"); !ok {
		t.Fatal("registration failed")
	}
	const count = 3000
	e.dc.writeMessages(t, "alice", count)
	desktop := imapLogin(t, e.dc.imap, "alice")
	if lines, _ := desktop.cmd("SELECT INBOX"); !strings.Contains(strings.Join(lines, "\n"), fmt.Sprintf("* %d EXISTS", count)) {
		t.Fatalf("SELECT: %v", lines[:3])
	}
	before := len(e.d.notifies("alice", "INBOX"))
	changed := time.Now()
	if _, ok := desktop.cmd(`STORE 1:* +FLAGS.SILENT (\Seen \Deleted)`); !ok {
		t.Fatal("STORE failed")
	}
	lines, ok := desktop.cmd("EXPUNGE")
	expunged := 0
	for _, l := range lines {
		if strings.HasSuffix(l, " EXPUNGE") {
			expunged++
		}
	}
	if !ok || expunged != count {
		t.Fatalf("EXPUNGE: %d messages expunged, ok %v", expunged, ok)
	}
	reqs, err := e.apns.WaitRequests(1, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if d := reqs[0].Received.Sub(changed); d < 2*time.Second {
		t.Errorf("push %v after the change, before the 2 s delay", d)
	}
	// New mail is pushed at once; had the bulk change made more than one
	// delayed push, they would have come before it.
	deliver(t, e.dc.lmtp, "alice@example.org")
	reqs, err = e.apns.WaitRequests(2, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The STORE's and the EXPUNGE's may be one request: one that waits
	// for its turn takes in what follows for the same mailbox.
	got := e.d.notifies("alice", "INBOX")[before:]
	if n := len(got); n < 2 || n > 6 {
		t.Errorf("%d /notify for the bulk change and one delivery, want a handful: %v", n, got)
	}
	events := map[string]bool{}
	for _, evs := range got {
		for _, ev := range evs {
			events[ev] = true
		}
	}
	if !events["FlagsSet"] || !events["MessageExpunge"] || !events["MessageNew"] {
		t.Errorf("events %v, want FlagsSet, MessageExpunge and MessageNew among them", got)
	}
	if n := e.apns.Count(); n != 2 {
		t.Errorf("%d pushes, want one delayed push for the bulk change and one for the new mail", n)
	}
}

// LOGOUT pipelined right behind a registration: the registration gets its
// tagged reply before LOGOUT's, and is stored.
func TestE2EPipelinedLogoutAfterRegistration(t *testing.T) {
	forEachDovecot(t, testE2EPipelinedLogoutAfterRegistration)
}

func testE2EPipelinedLogoutAfterRegistration(t *testing.T, dv dovecotKind) {
	e := newE2E(t, dv, "")
	ios := imapLogin(t, e.dc.imap, "alice")
	fmt.Fprintf(ios.c, `p1 XAPPLEPUSHSERVICE "aps-version" "2" "aps-account-id" "%s" "aps-device-token" "%s" "aps-subtopic" "com.apple.mobilemail" "mailboxes" ("INBOX")`+"\r\np2 LOGOUT\r\n", acc, token(1))
	var tagged []string
	ios.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		l, err := ios.r.ReadString('\n')
		if err != nil {
			break
		}
		if l = tagless(strings.TrimRight(l, "\r\n")); !strings.HasPrefix(l, "* XAPPLEPUSHSERVICE") {
			tagged = append(tagged, l)
		}
	}
	want := []string{"p1 OK XAPPLEPUSHSERVICE completed", "* BYE Logging out", "p2 OK Logout completed"}
	if strings.Join(tagged, "|") != strings.Join(want, "|") {
		t.Errorf("replies %q, want %q", tagged, want)
	}
	code, out, _ := run(t, "", "--config", filepath.Join(e.dir, "xapsd.yaml"), "devices", "list", "alice")
	if code != 0 || !strings.Contains(out, token(1)) {
		t.Errorf("registration not stored: %d %s", code, out)
	}
}

// doveadm over six users while xapsd is stopped (SIGSTOP: connections are
// accepted, nothing answers) waits out the plugin's timeout (2 s in the
// test configuration) about once, not once per user, and warns once per
// user.
func TestE2EDoveadmWithStoppedDaemon(t *testing.T) {
	forEachDovecot(t, testE2EDoveadmWithStoppedDaemon)
}

func testE2EDoveadmWithStoppedDaemon(t *testing.T, dv dovecotKind) {
	users := []string{"u1", "u2", "u3", "u4", "u5", "u6"}
	e := newE2EWith(t, dv, "", "", dovecotOptions{users: users})
	for _, u := range users {
		deliver(t, e.dc.lmtp, u+"@example.org")
	}
	list := filepath.Join(e.dc.dir, "doveadm-users")
	if err := os.WriteFile(list, []byte(strings.Join(users, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.d.signal(syscall.SIGSTOP)
	defer e.d.signal(syscall.SIGCONT)
	start := time.Now()
	out, err := e.dc.doveadm(t, "expunge", "-F", e.dc.inside+"/doveadm-users", "mailbox", "INBOX", "all")
	took := time.Since(start)
	if err != nil {
		t.Fatalf("doveadm expunge: %v\n%s", err, out)
	}
	if took > 3500*time.Millisecond {
		t.Errorf("doveadm took %v for %d users, want about one 2 s timeout", took, len(users))
	}
	for _, u := range users {
		warning := "Warning: xaps: POST /notify for user " + u + " mailbox INBOX failed"
		if n := strings.Count(out, warning); n != 1 {
			t.Errorf("%d warnings for %s, want 1:\n%s", n, u, out)
		}
	}
}
