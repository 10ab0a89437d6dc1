package integration

import (
	"cmp"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
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

// What a new admin meets at the first start: a broken credential that does
// not become a restart loop, one line that says what xapsd runs with (the
// same as --check-config says), warnings that name what to fix.

// A credential that does not load (expired, not yet valid, no topic, a key
// of another certificate, a missing file) does not stop the start: under
// systemd's Restart=on-failure that would be a restart loop, and Dovecot
// would only say "unreachable". xapsd runs, /register and /readyz answer
// 503 with the reason, the log has an error line, and a fixed file is
// picked up without a restart.
func TestBrokenCredentialStartsDegraded(t *testing.T) {
	ca, err := testpki.NewCA("ca")
	if err != nil {
		t.Fatal(err)
	}
	issue := func(o testpki.IssueOptions) *testpki.Leaf {
		l, err := ca.Issue(o)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	now := time.Now()
	expired := issue(testpki.IssueOptions{UID: topicA, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)})
	future := issue(testpki.IssueOptions{UID: topicA, NotBefore: now.Add(24 * time.Hour), NotAfter: now.Add(48 * time.Hour)})
	noUID := issue(testpki.IssueOptions{CommonName: "no uid", NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)})
	other := issue(testpki.IssueOptions{UID: topicA, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)})
	// Apple's mark for the development (sandbox) environment only, while
	// apnsEndpoint is production: APNs would refuse every push.
	devOnly := issue(testpki.IssueOptions{UID: topicA, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		Extensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 2, 840, 113635, 100, 6, 3, 1}, Value: []byte{5, 0}}}})
	for _, tc := range []struct {
		name      string
		cert, key []byte // nil cert: the files are missing
		reason    string
		fix       bool   // write a good certificate and expect it to be used
		public    string // what /register says instead of reason, if not the same
	}{
		{"expired", expired.CertPEM(), expired.KeyPEM(), "certificate has expired", true, ""},
		{"not yet valid", future.CertPEM(), future.KeyPEM(), "not valid yet", false, ""},
		{"no UID", noUID.CertPEM(), noUID.KeyPEM(), "no UID", false, ""},
		{"key of another certificate", expired.CertPEM(), other.KeyPEM(), "does not belong", false, ""},
		{"missing files", nil, nil, "no such file", true, "push.pem: missing"},
		{"certificate for the other environment", devOnly.CertPEM(), devOnly.KeyPEM(), "apnsEndpoint: development", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := testutil.TempDir(t)
			if tc.cert != nil {
				os.WriteFile(filepath.Join(dir, "push.pem"), tc.cert, 0o600)
				os.WriteFile(filepath.Join(dir, "push.key"), tc.key, 0o600)
			}
			metrics := fmt.Sprintf("127.0.0.1:%d", testutil.MustFreePort(t))
			addr := writeConfig(t, dir, "certificateFilePem: push.pem\ncertificateFilePemKey: push.key\nmetricsListenAddr: "+metrics+"\n")
			// --check-config says what the start says: it would start
			// (exit 0, so a reload is not refused), and why devices
			// cannot register.
			code, out, errOut := run(t, "", "--config", filepath.Join(dir, "xapsd.yaml"), "--check-config")
			if code != 0 || !strings.HasPrefix(out, "# xapsd would start with: ") ||
				!strings.Contains(errOut, "devices cannot register until this is fixed") || !strings.Contains(errOut, tc.reason) {
				t.Errorf("--check-config = %d, stdout %q, stderr %q; want 0, the summary, and a warning with %q", code, out, errOut, tc.reason)
			}
			d := startDaemon(t, dir, addr)
			status, body := post(t, addr, "/register", registerBody("alice", acc, token(1)))
			public := cmp.Or(tc.public, tc.reason)
			// The reason reaches the phone: file names, but no server
			// folder and no errno text.
			if status != 503 || !strings.Contains(body, "push.") || !strings.Contains(body, public) ||
				strings.Contains(body, dir) || strings.Contains(body, "no such file") {
				t.Errorf("/register = %d %q, want 503 naming the file and %q", status, body, public)
			}
			if status, body := get(t, "http://"+metrics+"/readyz"); status != 503 || !strings.Contains(body, tc.reason) {
				t.Errorf("/readyz = %d %q, want 503 and the reason", status, body)
			}
			if !d.waitLog("level=error", 5*time.Second) || !strings.Contains(d.log.String(), tc.reason) {
				t.Errorf("no error line with the reason in the log")
			}
			if tc.name == "expired" {
				// Its topic and end are still shown, and the expiry metric
				// goes negative, so the expired-certificate alert fires.
				if !d.waitLog("topic="+topicA, 5*time.Second) || !strings.Contains(d.log.String(), `expires="`+expired.Cert.NotAfter.UTC().Format(time.RFC3339)+`"`) {
					t.Errorf("the start-up line lacks the expired certificate's topic or end")
				}
				if _, m := get(t, "http://"+metrics+"/metrics"); !regexp.MustCompile(`(?m)^xapsd_credential_expiry_seconds -`).MatchString(m) {
					t.Errorf("xapsd_credential_expiry_seconds is not negative")
				}
			}
			if tc.fix {
				rewrite(t, func() { writePushCert(t, ca, dir, "push", topicB) },
					filepath.Join(dir, "push.pem"), filepath.Join(dir, "push.key"))
				testutil.Wait(15*time.Second, func() bool {
					status, body = post(t, addr, "/register", registerBody("alice", acc, token(1)))
					return status == 200
				})
				if status != 200 || body != topicB {
					t.Errorf("after the fix: /register = %d %q, want the new certificate's topic", status, body)
				}
			}
			if code := d.stop(); code != 0 {
				t.Errorf("exit code %d", code)
			}
		})
	}
}

// fieldRE reads key=value pairs as the text log writes them.
var fieldRE = regexp.MustCompile(`([A-Za-z]+)=("(?:[^"\\]|\\.)*"|\S+)`)

func fields(line string) map[string]string {
	out := map[string]string{}
	for _, m := range fieldRE.FindAllStringSubmatch(line, -1) {
		out[m[1]] = m[2]
	}
	return out
}

// One start-up line says what xapsd runs with, and --check-config says
// the same.
func TestStartupLineMatchesCheckConfig(t *testing.T) {
	e := newAPNsEnv(t, "")
	e.d.waitLog("xapsd is running", 5*time.Second)
	started := fields(logLine(t, e.d.log.String(), `msg="xapsd is running"`))
	code, out, errOut := run(t, "", "--config", filepath.Join(e.dir, "xapsd.yaml"), "--check-config")
	if code != 0 {
		t.Fatalf("--check-config: %d %s", code, errOut)
	}
	first, _, _ := strings.Cut(out, "\n")
	if !strings.HasPrefix(first, "# xapsd would start with: ") {
		t.Fatalf("--check-config does not start with the summary: %q", first)
	}
	checked := fields(first)
	block, _ := pem.Decode(mustRead(t, filepath.Join(e.dir, "push.pem")))
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"credential": `"PEM certificate ` + filepath.Join(e.dir, "push.pem") + `"`,
		"topic":      topicA,
		"expires":    `"` + leaf.NotAfter.UTC().Format(time.RFC3339) + `"`,
		"apns":       `"` + e.apns.URL + `"`,
		"listen":     `"` + e.addr + `"`,
		"registry":   filepath.Join(e.dir, "state", "database.json"),
	}
	for k, v := range want {
		if started[k] != v || checked[k] != v {
			t.Errorf("%s: start-up line %q, --check-config %q, want %q", k, started[k], checked[k], v)
		}
	}

	// Dry-run says so loudly, at warning level.
	dir := testutil.TempDir(t)
	addr := writeConfig(t, dir, "apnsEndpoint: dry-run\n")
	d := startDaemon(t, dir, addr)
	d.waitLog("DRY-RUN", 5*time.Second)
	line := logLine(t, d.log.String(), "DRY-RUN")
	if !strings.Contains(line, "level=warning") || !strings.Contains(line, "NOTHING IS SENT TO APPLE") {
		t.Errorf("dry-run start-up line %q", line)
	}
	code, _, errOut = run(t, "", "--config", filepath.Join(dir, "xapsd.yaml"), "--check-config")
	if code != 0 || !strings.Contains(errOut, "warning: apnsEndpoint is dry-run: pushes are logged, never sent to Apple") {
		t.Errorf("dry-run --check-config: %d %q", code, errOut)
	}
}

// A topic iOS Mail does not listen to is accepted by Apple and never
// wakes a phone: both the start and --check-config say so.
func TestTopicMailIgnoresIsWarned(t *testing.T) {
	const appTopic = "com.example.mailclient.push.0000000000000000000000000000000"
	e := newAPNsEnv(t, "")
	e.d.stop()
	writePushCert(t, e.ca, e.dir, "push", appTopic)
	want := []string{appTopic, "com.apple.mail.", "com.apple.mobilemail.push.", "not one iOS Mail listens to"}
	code, _, errOut := run(t, "", "--config", filepath.Join(e.dir, "xapsd.yaml"), "--check-config")
	for _, w := range want {
		if code != 0 || !strings.Contains(errOut, w) {
			t.Errorf("--check-config: %d, stderr %q lacks %q", code, errOut, w)
		}
	}
	d := startDaemon(t, e.dir, e.addr, e.caEnv)
	d.waitLog("not one iOS Mail listens to", 5*time.Second)
	line := logLine(t, d.log.String(), "not one iOS Mail listens to")
	for _, w := range want {
		if !strings.Contains(line, w) || !strings.Contains(line, "level=warning") {
			t.Errorf("start-up warning %q lacks %q", line, w)
		}
	}
}

// --check-config passing must mean the daemon can write its state folder:
// the check runs as the user who runs it, not as root.
func TestCheckConfigChecksTheStateFolderAsTheUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test switches users and must run as root; CI runs it as root")
	}
	const uid = 4243 // needs no /etc/passwd entry
	// The user must reach the binary and the configuration: t.TempDir's
	// parent is private.
	base, err := os.MkdirTemp("", "xapsd-as-user-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	bin := filepath.Join(base, "xapsd")
	data, err := os.ReadFile(xapsdBin)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(bin, data, 0o755)
	runAs := func(args ...string) (int, string, string) {
		cmd := exec.Command(bin, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		cmd.Run()
		return cmd.ProcessState.ExitCode(), out.String(), errb.String()
	}
	for _, tc := range []struct {
		name  string
		setup func(state string)
		want  string // "" = passes
	}{
		{"the user's folder", func(state string) { os.Mkdir(state, 0o700); os.Chown(state, uid, uid) }, ""},
		{"root's folder", func(state string) { os.Mkdir(state, 0o700) }, "not writable by uid 4243"},
		{"a lock file left by root", func(state string) {
			os.Mkdir(state, 0o700)
			os.Chown(state, uid, uid)
			os.WriteFile(filepath.Join(state, "database.json.lock"), nil, 0o600)
		}, "database.json.lock in the state folder is not writable by uid 4243"},
		{"a folder that does not exist under root's", func(string) {}, "does not exist and"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(base, strings.ReplaceAll(tc.name, " ", "-"))
			os.Mkdir(dir, 0o755)
			state := filepath.Join(dir, "state")
			tc.setup(state)
			cfg := filepath.Join(dir, "xapsd.yaml")
			os.WriteFile(cfg, fmt.Appendf(nil, "apnsEndpoint: dry-run\ndatabaseFile: state/database.json\nport: %d\nmetricsListenAddr: off\n", testutil.MustFreePort(t)), 0o644)
			code, out, errOut := runAs("--config", cfg, "--check-config", "--quiet")
			switch {
			case tc.want == "" && (code != 0 || out != "" || strings.Contains(errOut, "xapsd:")):
				t.Errorf("exit %d, stdout %q, stderr %q; want a quiet pass", code, out, errOut)
			case tc.want != "" && (code != 1 || !strings.Contains(errOut, tc.want)):
				t.Errorf("exit %d, stderr %q; want 1 and %q", code, errOut, tc.want)
			}
			if tc.want == "" {
				return
			}
			// What the check refuses, the start refuses too, in the same
			// words.
			cmd := exec.Command(bin, "--config", cfg)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
			var startOut syncBuffer
			cmd.Stdout, cmd.Stderr = &startOut, &startOut
			done := make(chan error, 1)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
				if cmd.ProcessState.ExitCode() != 1 {
					t.Errorf("the daemon exited %d", cmd.ProcessState.ExitCode())
				}
				if !strings.Contains(startOut.String(), tc.want) {
					t.Errorf("the daemon's log does not say %q:\n%s", tc.want, startOut.String())
				}
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Errorf("the daemon started where the check failed")
			}
		})
	}
}

// test-push tries each device once: its output shows no "retrying", and
// the daemon logs it as a test.
func TestTestPushIsLoggedAsATestAndNotRetried(t *testing.T) {
	e := newAPNsEnv(t, "")
	e.register(t, "alice", acc, token(1))
	e.register(t, "bob", acc, token(2))
	e.apns.SetResponder(func(r fakeapns.Request) fakeapns.Response {
		if r.Token == token(2) { // bob's pushes mark time
			return fakeapns.Response{}
		}
		return fakeapns.Response{Status: 503, Reason: "ServiceUnavailable"}
	})
	cfg := filepath.Join(e.dir, "xapsd.yaml")
	code, out, _ := run(t, "", "--config", cfg, "test-push", "alice")
	if code != 1 || !strings.Contains(out, "failed") || !strings.Contains(out, "ServiceUnavailable") || strings.Contains(out, "retry") {
		t.Errorf("test-push: %d\n%s", code, out)
	}
	code, out, _ = run(t, "", "--config", cfg, "test-push", "--json", "alice")
	var res map[string]any
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != 1 || res["outcome"] != "failed" || res["status"] != float64(503) {
		t.Errorf("test-push --json: %d %q %v", code, out, err)
	}
	// A retry would come within a second (the first backoff); two flag
	// changes for bob, each pushed at least a second after it was made,
	// are the later event.
	for n := 1; n <= 2; n++ {
		post(t, e.addr, "/notify", notifyBody("bob", "INBOX", "FlagsSet"))
		testutil.WaitWithin(t, 10*time.Second, "bob's delayed push", func() bool { return perToken(e.apns.Requests())[token(2)] == n })
	}
	if n := perToken(e.apns.Requests())[token(1)]; n != 2 {
		t.Errorf("%d pushes reached APNs, want the 2 test pushes and no retry", n)
	}
	log := e.d.log.String()
	if strings.Contains(log, "retried") || strings.Count(log, `msg="test push not delivered"`) != 2 || !strings.Contains(log, "test=true") {
		t.Errorf("daemon log:\n%s", log)
	}
	e.apns.SetResponder(nil)
	if code, out, _ := run(t, "", "--config", cfg, "test-push", "alice"); code != 0 || !strings.Contains(out, "delivered") {
		t.Errorf("test-push delivered: %d %s", code, out)
	}
	if !e.d.waitLog(`msg="test push"`, 5*time.Second) {
		t.Error("a delivered test push is not logged as a test")
	}
}
