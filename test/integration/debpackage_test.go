package integration

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

// The Debian packages, as an admin uses them: make deb builds one here
// (Debian 12, Dovecot 2.3.19) and one in each root of test/dovecot-roots
// (Debian 12 with bookworm-backports' 2.3.21, 13's 2.4.1, forky's 2.4.5),
// each depending on the Dovecot ABI it was built against. Each is installed
// with apt-get into a clean root of its release (a throw-away overlay on the
// clean roots test/deps.sh keeps; with backports enabled where its Dovecot
// comes from there), Dovecot loads the plugin once the snippet is linked
// into conf.d, a registration through Dovecot and a delivered mail reach the
// APNs stand-in with the daemon started by hand as the xapsd user (there is
// no systemd in a root), remove keeps the registry, and purge removes what
// the package made but keeps the admin's credentials and the imported Apple
// certificates (and the user that owns them), saying so.

func rootCache() string {
	if c := os.Getenv("XAPS_ROOT_CACHE"); c != "" {
		return c
	}
	return "/var/cache/xapsd"
}

// runOK runs a command and fails the test with its output if it fails.
func runOK(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// overlayRoot mounts a throw-away copy of base and returns its path.
func overlayRoot(t *testing.T, base string) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "xdeb-")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"upper", "work", "root"} {
		os.Mkdir(filepath.Join(dir, d), 0o755)
	}
	m := filepath.Join(dir, "root")
	runOK(t, "mount", "-t", "overlay", "overlay", "-o",
		fmt.Sprintf("lowerdir=%s,upperdir=%s/upper,workdir=%s/work", base, dir, dir), m)
	t.Cleanup(func() {
		exec.Command("umount", "-l", m).Run()
		os.RemoveAll(dir)
	})
	return m
}

// repoVersion is what the packages and xapsd --version say.
func repoVersion(t *testing.T) (version, epoch string) {
	t.Helper()
	v, err := exec.Command("git", "-C", "../..", "describe", "--always", "--dirty").Output()
	if err != nil {
		return "dev", fmt.Sprint(time.Now().Unix())
	}
	e, _ := exec.Command("git", "-C", "../..", "log", "-1", "--format=%ct").Output()
	return strings.TrimSpace(string(v)), strings.TrimSpace(string(e))
}

// debTarget is one Debian package of the matrix: where make deb builds it
// and where the test installs it.
type debTarget struct {
	name      string // debian12, debian12-bpo, debian13, debian14
	buildRoot string // "" for this machine
	clean     string // a clean root of its release
	backports string // the suite its Dovecot comes from, if backports
	missing   string // why it cannot be tested here
}

// debTargets is this machine's package and one per root of
// test/dovecot-roots.
func debTargets(t *testing.T) []debTarget {
	t.Helper()
	targets := []debTarget{{name: "debian12", clean: filepath.Join(rootCache(), "debian12-clean")}}
	for _, r := range dovecotRoots(t) {
		d := debTarget{name: strings.TrimSuffix(r.name, "-root"), buildRoot: filepath.Join(rootCache(), r.name),
			clean: filepath.Join(rootCache(), r.clean)}
		if strings.HasSuffix(r.suite, "-backports") {
			d.backports = r.suite
		}
		targets = append(targets, d)
	}
	for i, d := range targets {
		for _, r := range []string{d.buildRoot, d.clean} {
			if _, err := os.Stat(filepath.Join("/"+r, "usr/bin/apt-get")); err != nil {
				targets[i].missing = fmt.Sprintf("no Debian root at %s (test/deps.sh makes the roots; .ci/run does)", r)
			}
		}
	}
	return targets
}

// dovecotABI is what dovecot-core provides in root: dovecot-abi-2.4.abiv5.
func dovecotABI(t *testing.T, root string) string {
	t.Helper()
	out := runOK(t, "chroot", "/"+root, "dpkg-query", "-W", "-f=${Provides}", "dovecot-core")
	for _, p := range strings.Split(out, ",") {
		if f := strings.Fields(p); len(f) > 0 && strings.HasPrefix(f[0], "dovecot-abi-") {
			return f[0]
		}
	}
	t.Fatalf("dovecot-core in %q provides no dovecot-abi-*: %q", "/"+root, out)
	return ""
}

// buildDebs runs make deb and returns its packages by the Dovecot ABI each
// depends on.
func buildDebs(t *testing.T) map[string]string {
	t.Helper()
	version, epoch := repoVersion(t)
	out := testutil.TempDir(t)
	cmd := exec.Command("make", "-s", "-C", "../..", "deb", "DEB_OUT="+out)
	cmd.Env = append(os.Environ(), "VERSION="+version, "SOURCE_DATE_EPOCH="+epoch)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make deb: %v\n%s", err, b)
	}
	debs := map[string]string{}
	all, _ := filepath.Glob(filepath.Join(out, "*.deb"))
	for _, deb := range all {
		depends := runOK(t, "dpkg-deb", "-f", deb, "Depends")
		for _, d := range strings.Split(depends, ",") {
			if f := strings.Fields(d); len(f) > 0 && strings.HasPrefix(f[0], "dovecot-abi-") {
				if debs[f[0]] != "" {
					t.Fatalf("make deb made two packages for %s: %s and %s", f[0], debs[f[0]], deb)
				}
				debs[f[0]] = deb
			}
		}
	}
	return debs
}

func TestDebianPackages(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the package tests must run as root (chroot, mount); CI runs them as root")
	}
	targets := debTargets(t)
	debs := buildDebs(t)
	var all []string
	for _, deb := range debs {
		all = append(all, deb)
	}
	if out := runOK(t, "lintian", append([]string{"--no-tag-display-limit"}, all...)...); strings.Contains(out, "\nE: ") || strings.HasPrefix(out, "E: ") {
		t.Errorf("lintian reports errors:\n%s", out)
	}
	for _, d := range targets {
		t.Run(d.name, func(t *testing.T) {
			if d.missing != "" {
				t.Skipf("SKIPPED: %s", d.missing)
			}
			abi := dovecotABI(t, d.buildRoot)
			deb := debs[abi]
			if deb == "" {
				t.Fatalf("make deb made no package that depends on %s, the Dovecot ABI of %q (made %v)", abi, "/"+d.buildRoot, debs)
			}
			testDebianPackage(t, d, deb)
		})
	}
}

func testDebianPackage(t *testing.T, d debTarget, deb string) {
	root := overlayRoot(t, d.clean)
	inRoot := func(args ...string) string {
		t.Helper()
		return runOK(t, "chroot", append([]string{root}, args...)...)
	}
	apt := func(args ...string) string {
		t.Helper()
		// Testing's (forky's) Release file is valid for a week only: a
		// mirror that is a snapshot must not stop the test.
		return inRoot(append([]string{"env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-q",
			"-o", "Acquire::Check-Valid-Until=false"}, args...)...)
	}
	runOK(t, "cp", deb, root+"/tmp/")
	var target []string
	if d.backports != "" {
		// As an admin enables backports: beside the release's own source.
		sources := string(mustRead(t, root+"/etc/apt/sources.list"))
		f := strings.Fields(strings.SplitN(sources, "\n", 2)[0])
		if len(f) < 3 || f[0] != "deb" {
			t.Fatalf("%s/etc/apt/sources.list: %q", d.clean, sources)
		}
		line := fmt.Sprintf("deb %s %s main\n", f[1], d.backports)
		if err := os.WriteFile(root+"/etc/apt/sources.list.d/"+d.backports+".list", []byte(line), 0o644); err != nil {
			t.Fatal(err)
		}
		target = []string{"-t", d.backports}
	}
	apt("update")
	apt(append(append([]string{"install"}, target...), "/tmp/"+filepath.Base(deb))...)

	// The user, the folders, the files.
	passwd := inRoot("getent", "passwd", "xapsd")
	if !strings.Contains(passwd, ":/var/lib/xapsd:/usr/sbin/nologin") {
		t.Errorf("xapsd user: %q", passwd)
	}
	var uid, gid int
	fmt.Sscanf(strings.Join(strings.Split(passwd, ":")[2:4], " "), "%d %d", &uid, &gid)
	for path, want := range map[string]string{
		"/var/lib/xapsd": fmt.Sprintf("700 %d %d", uid, gid),
		"/etc/xapsd":     fmt.Sprintf("750 0 %d", gid),
	} {
		if got := strings.TrimSpace(runOK(t, "stat", "-c", "%a %u %g", root+path)); got != want {
			t.Errorf("%s: %s, want %s", path, got, want)
		}
	}
	// apt installed the Dovecot the package was built against.
	if got, want := dovecotVersion(t, root), dovecotVersion(t, d.buildRoot); got != want {
		t.Fatalf("the clean root has Dovecot %s, the package is for %s", got, want)
	}
	_, err := os.Stat(root + "/usr/lib/dovecot/modules/settings/libxaps_settings.so")
	framework := err == nil

	// Enable the snippet as the package's description says.
	os.Symlink("/usr/share/xapsd/dovecot/95-xaps.conf", root+"/etc/dovecot/conf.d/95-xaps.conf")

	// The daemon, configured by the admin, pushing to the stand-in.
	srv, err := fakeapns.Start(fakeapns.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	ca, err := testpki.NewCA("test push CA")
	if err != nil {
		t.Fatal(err)
	}
	etc := root + "/etc/xapsd"
	writePushCert(t, ca, etc, "push", topicA)
	if err := srv.WriteCAFile(etc + "/apns-ca.pem"); err != nil {
		t.Fatal(err)
	}
	port := testutil.MustFreePort(t)
	conf := fmt.Sprintf("listenAddr: 127.0.0.1\nport: %d\nmetricsListenAddr: \"off\"\nloglevel: debug\n"+
		"apnsEndpoint: %s\ncertificateFilePem: push.pem\ncertificateFilePemKey: push.key\n", port, srv.URL)
	os.WriteFile(etc+"/xapsd.yaml", []byte(conf), 0o640)
	for _, f := range []string{"xapsd.yaml", "push.pem", "push.key", "apns-ca.pem"} {
		os.Chown(filepath.Join(etc, f), 0, gid)
		os.Chmod(filepath.Join(etc, f), 0o640)
	}
	log := &syncBuffer{}
	xapsd := exec.Command("chroot", fmt.Sprintf("--userspec=%d:%d", uid, gid), root,
		"env", "SSL_CERT_FILE=/etc/xapsd/apns-ca.pem", "/usr/bin/xapsd", "--config", "/etc/xapsd/xapsd.yaml")
	xapsd.Stdout, xapsd.Stderr = log, log
	if err := xapsd.Start(); err != nil {
		t.Fatal(err)
	}
	xapsdDone := make(chan struct{})
	go func() { xapsd.Wait(); close(xapsdDone) }()
	t.Cleanup(func() {
		xapsd.Process.Kill()
		<-xapsdDone
		if t.Failed() {
			t.Logf("xapsd log:\n%s", log.String())
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitListening(t, addr, xapsdDone, log)

	// Dovecot from the package with the snippet, on test ports.
	dc := startPackagedDovecot(t, root, framework, "http://"+addr)
	ios := imapLogin(t, dc.imap, "alice")
	if lines, ok := ios.registerLikeIOS(acc, token(7), "INBOX"); !ok {
		t.Fatalf("registration through the packaged plugin failed: %v", lines)
	}
	deliver(t, dc.lmtp, "alice@example.org")
	reqs, err := srv.WaitRequests(1, 10*time.Second)
	if err != nil {
		t.Fatalf("no push after the delivery: %v", err)
	}
	if reqs[0].Token != token(7) || reqs[0].Topic != topicA {
		t.Errorf("push %+v", reqs[0])
	}
	if !testutil.StopProcess(xapsd.Process, xapsdDone, syscall.SIGTERM, 20*time.Second) {
		t.Fatal("xapsd did not stop on SIGTERM")
	}
	dc.stop()

	// remove keeps the registry and the configuration...
	apt("remove", "xapsd")
	if db, err := os.ReadFile(root + "/var/lib/xapsd/database.json"); err != nil || !strings.Contains(string(db), token(7)) {
		t.Errorf("after remove the registry is gone or lacks the device: %v", err)
	}
	if _, err := os.Stat(etc + "/xapsd.yaml"); err != nil {
		t.Errorf("after remove the configuration is gone: %v", err)
	}
	if _, err := os.Stat(root + "/usr/bin/xapsd"); err == nil {
		t.Error("after remove /usr/bin/xapsd is still there")
	}
	// ...purge removes what the package made, and keeps the admin's
	// credentials and the Apple certificates xapsd imported, which may
	// not be had again.
	appleCert := root + "/var/lib/xapsd/apple-push/mail.pem"
	os.MkdirAll(filepath.Dir(appleCert), 0o700)
	os.WriteFile(appleCert, []byte("an imported Apple push certificate\n"), 0o600)
	out := apt("purge", "xapsd")
	for _, p := range []string{"/var/lib/xapsd/database.json", "/var/lib/xapsd/database.json.lock", "/etc/xapsd/xapsd.yaml"} {
		if _, err := os.Stat(root + p); err == nil {
			t.Errorf("after purge %s is still there", p)
		}
	}
	for _, p := range []string{"/etc/xapsd/push.pem", "/etc/xapsd/push.key", "/etc/xapsd/apns-ca.pem", "/var/lib/xapsd/apple-push/mail.pem"} {
		if _, err := os.Stat(root + p); err != nil {
			t.Errorf("purge removed %s, which the package did not make: %v", p, err)
		}
	}
	if !strings.Contains(out, "purge kept") || !strings.Contains(out, "push.key") || !strings.Contains(out, "apple-push") {
		t.Errorf("purge does not say what it kept:\n%s", out)
	}
	if _, err := exec.Command("chroot", root, "getent", "passwd", "xapsd").CombinedOutput(); err != nil {
		t.Error("purge removed the xapsd user, which owns the files it kept")
	}
	// With nothing of the admin's left, purge removes everything,
	// the user too.
	os.RemoveAll(root + "/etc/xapsd")
	os.RemoveAll(root + "/var/lib/xapsd")
	apt(append(append([]string{"install"}, target...), "/tmp/"+filepath.Base(deb))...)
	apt("purge", "xapsd")
	for _, p := range []string{"/var/lib/xapsd", "/etc/xapsd"} {
		if _, err := os.Stat(root + p); err == nil {
			t.Errorf("after purge %s is still there", p)
		}
	}
	if out, err := exec.Command("chroot", root, "getent", "passwd", "xapsd").CombinedOutput(); err == nil {
		t.Errorf("after purge the xapsd user is still there: %s", out)
	}
}

func waitListening(t *testing.T, addr string, done <-chan struct{}, log *syncBuffer) {
	t.Helper()
	err := testutil.WaitStarted(done, 20*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	switch {
	case errors.Is(err, testutil.ErrExited):
		t.Fatalf("xapsd exited during start:\n%s", log.String())
	case err != nil:
		t.Fatalf("xapsd does not listen on %s:\n%s", addr, log.String())
	}
}

type packagedDovecot struct {
	imap, lmtp string
	cmd        *exec.Cmd
	done       chan struct{}
}

func (d *packagedDovecot) stop() {
	select {
	case <-d.done:
		return
	default:
	}
	testutil.StopProcess(d.cmd.Process, d.done, syscall.SIGTERM, 10*time.Second)
}

// startPackagedDovecot runs the root's Dovecot with a test configuration
// that includes the enabled snippet (/etc/dovecot/conf.d/95-xaps.conf) and
// only points the plugin at the test daemon's address. framework: the
// package reads its settings through Dovecot's settings framework (it has a
// settings module), so the configuration is in 2.4's syntax.
func startPackagedDovecot(t *testing.T, root string, framework bool, url string) *packagedDovecot {
	t.Helper()
	dir := root + "/tmp/dc"
	for _, d := range []string{"run", "state", "home/alice"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	os.Chown(filepath.Join(dir, "home"), mailUID, mailUID)
	os.Chown(filepath.Join(dir, "home/alice"), mailUID, mailUID)
	os.WriteFile(filepath.Join(dir, "users"), []byte(fmt.Sprintf("alice:{PLAIN}secret:%d:%d::/tmp/dc/home/alice::\n", mailUID, mailUID)), 0o644)
	imapPort, lmtpPort := testutil.MustFreePort(t), testutil.MustFreePort(t)
	var conf string
	if !framework {
		conf = fmt.Sprintf(`base_dir = /tmp/dc/run
state_dir = /tmp/dc/state
log_path = /tmp/dc/dovecot.log
mail_debug = yes
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_username_format = %%Ln
passdb {
  driver = passwd-file
  args = scheme=PLAIN /tmp/dc/users
}
userdb {
  driver = passwd-file
  args = /tmp/dc/users
}
mail_location = maildir:~/Maildir
service imap-login {
  inet_listener imap {
    port = %d
  }
  inet_listener imaps {
    port = 0
  }
}
service lmtp {
  inet_listener lmtp {
    port = %d
  }
}
!include /etc/dovecot/conf.d/95-xaps.conf
plugin {
  xaps_config = url=%s
}
`, imapPort, lmtpPort, url)
	} else {
		conf = fmt.Sprintf(`dovecot_config_version = 2.4.1
dovecot_storage_version = 2.4.1
base_dir = /tmp/dc/run
state_dir = /tmp/dc/state
log_path = /tmp/dc/dovecot.log
mail_debug = yes
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
auth_allow_cleartext = yes
auth_username_format = %%{user | username | lower}
passdb passwd-file {
  passwd_file_path = /tmp/dc/users
  default_password_scheme = PLAIN
}
userdb passwd-file {
  passwd_file_path = /tmp/dc/users
}
mail_driver = maildir
mail_path = ~/Maildir
service imap-login {
  inet_listener imap {
    port = %d
  }
  inet_listener imaps {
    port = 0
  }
}
service lmtp {
  inet_listener lmtp {
    port = %d
  }
}
!include /etc/dovecot/conf.d/95-xaps.conf
xaps_url = %s
`, imapPort, lmtpPort, url)
	}
	os.WriteFile(filepath.Join(dir, "dovecot.conf"), []byte(conf), 0o644)
	d := &packagedDovecot{done: make(chan struct{}),
		imap: fmt.Sprintf("127.0.0.1:%d", imapPort), lmtp: fmt.Sprintf("127.0.0.1:%d", lmtpPort)}
	d.cmd = exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount -t proc proc "$1/proc" && exec chroot "$1" dovecot -F -c /tmp/dc/dovecot.conf`, "sh", root)
	d.cmd.Stdout, d.cmd.Stderr = os.Stderr, os.Stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.stop()
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
	for _, addr := range []string{d.imap, d.lmtp} {
		err := testutil.WaitStarted(d.done, 15*time.Second, func() bool {
			c, err := net.DialTimeout("tcp", addr, 2*time.Second)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		switch {
		case errors.Is(err, testutil.ErrExited):
			logData, _ := os.ReadFile(filepath.Join(dir, "dovecot.log"))
			t.Fatalf("the packaged Dovecot exited during start:\n%s", logData)
		case err != nil:
			t.Fatalf("the packaged Dovecot does not listen on %s", addr)
		}
	}
	return d
}
