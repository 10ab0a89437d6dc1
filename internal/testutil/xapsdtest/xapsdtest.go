// Package xapsdtest runs xapsd in the test's own process, on loopback,
// the way a Go server tests itself: the whole daemon as cmd/xapsd runs it
// (internal/daemon), from a configuration file written for the test, its
// log kept for the test's assertions, with the HTTP/2 stand-in for APNs
// (fakeapns) trusted in place of Apple. It also holds what every test of
// the daemon needs to talk to it, whether it runs here or as the built
// binary (test/integration keeps the tests that need a process of their
// own: kill -9, signals, file limits, packaging, Dovecot).
package xapsdtest

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/config"
	"github.com/xapsd/xapsd/internal/daemon"
	"github.com/xapsd/xapsd/internal/logging"
	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

// WriteConfig writes xapsd.yaml into dir with a free port, test-friendly
// defaults and the given extra "key: value" lines, which replace a
// default of the same key; it returns the plugin API's address.
func WriteConfig(t testing.TB, dir string, extra string) string {
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

// Buffer collects a log for assertions (testutil.Buffer).
type Buffer = testutil.Buffer

// WaitLog waits up to timeout for substr in log.
func WaitLog(log fmt.Stringer, substr string, timeout time.Duration) bool {
	return testutil.Wait(timeout, func() bool { return strings.Contains(log.String(), substr) })
}

// WaitCount waits up to timeout until substr occurs at least n times in
// log, and returns how often it does.
func WaitCount(log fmt.Stringer, substr string, n int, timeout time.Duration) int {
	testutil.Wait(timeout, func() bool { return strings.Count(log.String(), substr) >= n })
	return strings.Count(log.String(), substr)
}

// Options change how Start runs the daemon.
type Options struct {
	// APNs, when set, is the stand-in the daemon trusts in place of
	// Apple (the built binary gets its CA through SSL_CERT_FILE).
	APNs *fakeapns.Server
	// Roots is trusted for APNs instead, when APNs is not set.
	Roots *x509.CertPool
}

// Daemon is xapsd running in this process.
type Daemon struct {
	t      testing.TB
	Dir    string
	Addr   string  // the plugin API
	Log    *Buffer // everything it logged
	cancel context.CancelFunc
	reload chan struct{}
	done   chan struct{}
	err    error
}

// Start runs xapsd with dir/xapsd.yaml, as `xapsd --config` would, and
// returns once the plugin API listens; it stops when the test ends, and
// its log is shown when the test failed.
func Start(t testing.TB, dir string, o Options) *Daemon {
	t.Helper()
	d, err := Launch(t, dir, o)
	if err != nil {
		t.Fatalf("xapsd did not start: %v\n%s", err, d.Log.String())
	}
	return d
}

// Launch is Start for a start that may fail: it returns Run's error when
// the daemon ends before it listens.
func Launch(t testing.TB, dir string, o Options) (*Daemon, error) {
	t.Helper()
	d := &Daemon{t: t, Dir: dir, Log: &Buffer{}, reload: make(chan struct{}, 1), done: make(chan struct{})}
	cfg, warnings, err := config.Load(filepath.Join(dir, "xapsd.yaml"))
	if err != nil {
		return d, err
	}
	log, err := logging.New(d.Log, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return d, err
	}
	for _, w := range warnings {
		log.Warn(w)
	}
	roots := o.Roots
	if o.APNs != nil {
		roots = o.APNs.CertPool()
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	ready := make(chan string, 1)
	go func() {
		defer close(d.done)
		d.err = daemon.Run(ctx, daemon.Options{Config: cfg, Log: log, Reload: d.reload, APNsRoots: roots,
			Ready: func(addr string) { ready <- addr }})
	}()
	select {
	case d.Addr = <-ready:
	case <-d.done:
		cancel()
		return d, d.err
	case <-time.After(testutil.Patience):
		cancel()
		return d, fmt.Errorf("not listening within %v", testutil.Patience)
	}
	t.Cleanup(func() {
		d.Stop()
		if t.Failed() {
			t.Logf("xapsd log:\n%s", d.Log.String())
		}
	})
	return d, nil
}

// Stop stops the daemon as SIGTERM does and returns Run's error: nil is
// exit code 0.
func (d *Daemon) Stop() error {
	d.cancel()
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		d.t.Fatalf("xapsd did not stop within 30 s:\n%s", d.Log.String())
	}
	return d.err
}

// Running says whether the daemon still runs.
func (d *Daemon) Running() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// Reload is SIGHUP.
func (d *Daemon) Reload() {
	select {
	case d.reload <- struct{}{}:
	default:
	}
}

// WaitLog waits up to timeout for substr in the daemon's log.
func (d *Daemon) WaitLog(substr string, timeout time.Duration) bool {
	return WaitLog(d.Log, substr, timeout)
}

// WaitCount waits up to timeout until substr occurs n times in the log.
func (d *Daemon) WaitCount(substr string, n int, timeout time.Duration) int {
	return WaitCount(d.Log, substr, n, timeout)
}

// Client is what the helpers below send with: the plugin's requests are
// answered in milliseconds, a broken daemon must not hang a test.
var Client = &http.Client{Timeout: 10 * time.Second}

// Post sends body to addr's path and returns the status and body.
func Post(t testing.TB, addr, path, body string) (int, string) {
	t.Helper()
	resp, err := Client.Post("http://"+addr+path, "application/json; charset=utf-8", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Get fetches url and returns the status and body.
func Get(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := Client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// RegisterBody is a /register as the Dovecot plugin sends it.
func RegisterBody(user, account, token string, mailboxes ...string) string {
	if len(mailboxes) == 0 {
		mailboxes = []string{"INBOX"}
	}
	return fmt.Sprintf(`{"ApsAccountId":"%s","ApsDeviceToken":"%s","ApsSubtopic":"com.apple.mobilemail","Username":"%s","Mailboxes": ["%s"]}`,
		account, token, user, strings.Join(mailboxes, `","`))
}

// NotifyBody is a /notify as the Dovecot plugin sends it.
func NotifyBody(user, mailbox string, events ...string) string {
	return fmt.Sprintf(`{"Username":"%s","Mailbox":"%s","Events": ["%s"]}`, user, mailbox, strings.Join(events, `","`))
}

// Token is device token number i, as iOS writes tokens.
func Token(i int) string { return fmt.Sprintf("%064X", i) }

// PerToken counts the pushes to each device token.
func PerToken(reqs []fakeapns.Request) map[string]int {
	got := map[string]int{}
	for _, r := range reqs {
		got[r.Token]++
	}
	return got
}

// WritePushCert writes dir/name.pem and dir/name.key: a push certificate
// for topic, valid for a year, issued by ca.
func WritePushCert(t testing.TB, ca *testpki.CA, dir, name, topic string) {
	t.Helper()
	leaf, err := ca.Issue(testpki.IssueOptions{UID: topic, CommonName: "Apple Push Services: " + topic,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour), IsClient: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".pem"), leaf.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".key"), leaf.KeyPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Rewrite runs write, which replaces the files at paths, and gives a file
// whose modification time did not move one a second after its old one:
// the credential watcher compares size and time, and on a file system
// with whole-second times a rewrite within the same second looks like
// no change at all.
func Rewrite(t testing.TB, write func(), paths ...string) {
	t.Helper()
	old := map[string]time.Time{}
	for _, p := range paths {
		if st, err := os.Stat(p); err == nil {
			old[p] = st.ModTime()
		}
	}
	write()
	for p, was := range old {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if !st.ModTime().After(was) {
			if err := os.Chtimes(p, time.Now(), was.Add(time.Second)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// The topics of the tests' push certificates, and an account id as iOS
// sends them.
const (
	TopicA = "com.apple.mail.XServer.11111111-2222-4333-8444-555555555555"
	TopicB = "com.apple.mail.XServer.66666666-7777-4888-8999-000000000000"
	Acc    = "0715A26B-CA09-4730-A419-793000CA982E"
)

// APNsSetup is a folder with a push certificate for TopicA (push.pem,
// push.key, issued by CA) and an xapsd.yaml that pushes with it to the
// stand-in for APNs, which trusts it; CAFile holds the stand-in's CA for
// a built binary (SSL_CERT_FILE).
type APNsSetup struct {
	Dir    string
	Addr   string // the plugin API, once a daemon runs on Dir
	APNs   *fakeapns.Server
	CA     *testpki.CA
	CAFile string
}

// NewAPNsSetup makes an APNsSetup; extra lines go into xapsd.yaml. The
// stand-in closes when the test ends.
func NewAPNsSetup(t testing.TB, extra string) *APNsSetup {
	t.Helper()
	srv, err := fakeapns.Start(fakeapns.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	dir := testutil.TempDir(t)
	caFile := filepath.Join(dir, "apns-ca.pem")
	if err := srv.WriteCAFile(caFile); err != nil {
		t.Fatal(err)
	}
	ca, err := testpki.NewCA("test push CA")
	if err != nil {
		t.Fatal(err)
	}
	WritePushCert(t, ca, dir, "push", TopicA)
	addr := WriteConfig(t, dir, fmt.Sprintf("apnsEndpoint: %s\ncertificateFilePem: push.pem\ncertificateFilePemKey: push.key\n%s", srv.URL, extra))
	return &APNsSetup{Dir: dir, Addr: addr, APNs: srv, CA: ca, CAFile: caFile}
}

// Register registers user's device with the daemon at s.Addr, or fails
// the test.
func (s *APNsSetup) Register(t testing.TB, user, account, tok string, boxes ...string) {
	t.Helper()
	status, body := Post(t, s.Addr, "/register", RegisterBody(user, account, tok, boxes...))
	if status != 200 {
		t.Fatalf("register %s: %d %q", user, status, body)
	}
}

// PluginSecret is the tests' pluginSecretFile content.
const PluginSecret = "9c2b7d1e4f6a8c0e2b4d6f8a0c2e4b6d"

// LogLine is the first line of log that holds msg, or fails the test.
func LogLine(t testing.TB, log, msg string) string {
	t.Helper()
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, msg) {
			return l
		}
	}
	t.Fatalf("no log line with %q in:\n%s", msg, log)
	return ""
}

// GrepLines are the lines of s that hold substr.
func GrepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// MustRead reads path or fails the test.
func MustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
