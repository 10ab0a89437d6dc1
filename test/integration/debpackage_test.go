package integration

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

// The Debian packages, as an admin uses them: make deb's package for
// Debian 12 (built here, Dovecot 2.3) and for Debian 13 (built in the
// Debian 13 root, Dovecot 2.4) is installed with apt-get into a clean root
// of its release (a throw-away overlay on the clean roots test/deps.sh
// keeps), Dovecot loads the plugin once the snippet is linked into conf.d,
// a registration through Dovecot and a delivered mail reach the APNs
// stand-in with the daemon started by hand as the xapsd user (there is no
// systemd in a root), remove keeps the registry, and purge removes what
// the package made but keeps the admin's credentials and the imported
// Apple certificates (and the user that owns them), saying so.

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

// buildDebs makes the Debian 12 package on this machine and the Debian 13
// one inside the Debian 13 root, and returns their paths by release.
func buildDebs(t *testing.T) map[string]string {
	t.Helper()
	version, epoch := repoVersion(t)
	out := t.TempDir()
	cmd := exec.Command("bash", "../../scripts/deb.sh", "--out", out)
	cmd.Env = append(os.Environ(), "VERSION="+version, "SOURCE_DATE_EPOCH="+epoch)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("deb.sh: %v\n%s", err, b)
	}
	debs := map[string]string{}
	m, _ := filepath.Glob(filepath.Join(out, "xapsd_*~deb12_*.deb"))
	if len(m) != 1 {
		t.Fatalf("deb.sh made %v, want one xapsd_*~deb12_*.deb", m)
	}
	debs["12"] = m[0]

	// Debian 13: the sources and the static xapsd deb.sh just built, into
	// the root with Dovecot 2.4's dovecot-dev; there is no Go in it.
	root := debian13Root()
	work, err := os.MkdirTemp(root+"/tmp", "xapsd-deb-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	for _, p := range []string{"README.md", "Makefile", "configs", "scripts", "dovecot/Makefile", "dovecot/src", "bin/xapsd"} {
		os.MkdirAll(filepath.Dir(filepath.Join(work, p)), 0o755)
		runOK(t, "cp", "-r", filepath.Join("../..", p), filepath.Join(work, p))
	}
	inside := strings.TrimPrefix(work, root)
	runOK(t, "chroot", root, "env", "VERSION="+version, "SOURCE_DATE_EPOCH="+epoch,
		"bash", inside+"/scripts/deb.sh", "--prebuilt-daemon", "--out", inside+"/dist")
	m, _ = filepath.Glob(filepath.Join(work, "dist", "xapsd_*~deb13_*.deb"))
	if len(m) != 1 {
		t.Fatalf("deb.sh in the Debian 13 root made %v, want one xapsd_*~deb13_*.deb", m)
	}
	debs["13"] = m[0]
	return debs
}

func TestDebianPackages(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the package tests must run as root (chroot, mount); CI runs them as root")
	}
	clean := map[string]string{"12": rootCache() + "/debian12-clean", "13": rootCache() + "/debian13-clean"}
	for _, r := range []string{clean["12"], clean["13"], debian13Root()} {
		if _, err := os.Stat(r + "/usr/bin/apt-get"); err != nil {
			t.Skipf("SKIPPED: no Debian root at %s (test/deps.sh makes the roots; .ci/run does)", r)
		}
	}
	debs := buildDebs(t)
	if out := runOK(t, "lintian", "--no-tag-display-limit", debs["12"], debs["13"]); strings.Contains(out, "\nE: ") || strings.HasPrefix(out, "E: ") {
		t.Errorf("lintian reports errors:\n%s", out)
	}
	for _, release := range []string{"12", "13"} {
		t.Run("debian"+release, func(t *testing.T) { testDebianPackage(t, release, debs[release], clean[release]) })
	}
}

func testDebianPackage(t *testing.T, release, deb, clean string) {
	root := overlayRoot(t, clean)
	inRoot := func(args ...string) string {
		t.Helper()
		return runOK(t, "chroot", append([]string{root}, args...)...)
	}
	apt := func(args ...string) string {
		t.Helper()
		return inRoot(append([]string{"env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-q"}, args...)...)
	}
	runOK(t, "cp", deb, root+"/tmp/")
	apt("update")
	apt("install", "/tmp/"+filepath.Base(deb))

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
	dovecotVersion := strings.Fields(inRoot("dovecot", "--version"))[0]
	if want := map[string]string{"12": "2.3.", "13": "2.4."}[release]; !strings.HasPrefix(dovecotVersion, want) {
		t.Fatalf("Debian %s root has Dovecot %s", release, dovecotVersion)
	}

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
	port := freePort(t)
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
	dc := startPackagedDovecot(t, root, release, "http://"+addr)
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
	xapsd.Process.Signal(syscall.SIGTERM)
	select {
	case <-xapsdDone:
	case <-time.After(20 * time.Second):
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
	apt("install", "/tmp/"+filepath.Base(deb))
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
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			t.Fatalf("xapsd exited during start:\n%s", log.String())
		default:
		}
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("xapsd does not listen on %s:\n%s", addr, log.String())
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
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
	}
}

// startPackagedDovecot runs the root's Dovecot with a test configuration
// that includes the enabled snippet (/etc/dovecot/conf.d/95-xaps.conf) and
// only points the plugin at the test daemon's address.
func startPackagedDovecot(t *testing.T, root, release, url string) *packagedDovecot {
	t.Helper()
	dir := root + "/tmp/dc"
	for _, d := range []string{"run", "state", "home/alice"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	os.Chown(filepath.Join(dir, "home"), mailUID, mailUID)
	os.Chown(filepath.Join(dir, "home/alice"), mailUID, mailUID)
	os.WriteFile(filepath.Join(dir, "users"), []byte(fmt.Sprintf("alice:{PLAIN}secret:%d:%d::/tmp/dc/home/alice::\n", mailUID, mailUID)), 0o644)
	imapPort, lmtpPort := freePort(t), freePort(t)
	var conf string
	if release == "12" {
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
		deadline := time.Now().Add(15 * time.Second)
		for {
			if c, err := net.Dial("tcp", addr); err == nil {
				c.Close()
				break
			}
			select {
			case <-d.done:
				logData, _ := os.ReadFile(filepath.Join(dir, "dovecot.log"))
				t.Fatalf("the packaged Dovecot exited during start:\n%s", logData)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("the packaged Dovecot does not listen on %s", addr)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return d
}
