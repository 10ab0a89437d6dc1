package appleid

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/applecerts"
	"github.com/xapsd/xapsd/internal/creds"
	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

const (
	testAccount = "admin@example.com"
	testHash    = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8" // SHA-256 of "password"
	testHost    = "mail.example.com"
)

// fixture holds what is slow to make; RSA keys take a while under -race.
type fixture struct {
	ca     *testpki.CA
	vendor *testpki.Leaf // the stand-in for macOS Server's vendor identity
	server *testpki.Leaf // TLS certificate of the stand-in service
	keys   []*rsa.PrivateKey
}

var (
	fixOnce sync.Once
	fix     fixture
	fixErr  error
)

func getFixture(t testing.TB) *fixture {
	t.Helper()
	fixOnce.Do(func() {
		var f fixture
		if f.ca, fixErr = testpki.NewCA("Apple FairPlay stand-in"); fixErr != nil {
			return
		}
		if f.vendor, fixErr = f.ca.Issue(testpki.IssueOptions{CommonName: "APN-Server.test-vendor"}); fixErr != nil {
			return
		}
		if f.server, fixErr = testpki.ServerCert(f.ca); fixErr != nil {
			return
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range 10 {
			wg.Go(func() {
				k, err := rsa.GenerateKey(rand.Reader, 2048)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					fixErr = err
					return
				}
				f.keys = append(f.keys, k)
			})
		}
		wg.Wait()
		fix = f
	})
	if fixErr != nil {
		t.Fatal(fixErr)
	}
	return &fix
}

// logHook collects log entries.
type logHook struct {
	mu      sync.Mutex
	entries []logrus.Entry
}

func (h *logHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h *logHook) Fire(e *logrus.Entry) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.entries = append(h.entries, *e)
	return nil
}

// find returns the entries at level whose message or error contains s.
func (h *logHook) find(level logrus.Level, s string) []logrus.Entry {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []logrus.Entry
	for _, e := range h.entries {
		text := e.Message
		if err, ok := e.Data[logrus.ErrorKey].(error); ok {
			text += " " + err.Error()
		}
		if e.Level == level && strings.Contains(text, s) {
			out = append(out, e)
		}
	}
	return out
}

// env is a state folder, a stand-in service and a settable clock.
type env struct {
	fx         *fixture
	dir        string
	stub       *appleStub
	vendorCert string
	vendorKey  string
	logs       *logHook
	keyNo      atomic.Int64

	mu    sync.Mutex
	clock time.Time
}

func newEnv(t *testing.T, mode stubMode) *env {
	t.Helper()
	fx := getFixture(t)
	e := &env{fx: fx, dir: filepath.Join(t.TempDir(), "apple-push"), logs: &logHook{},
		clock: time.Now().Truncate(time.Second)}
	e.stub = newAppleStub(t, fx, e.now)
	e.stub.setMode(mode)
	e.vendorCert = writeFile(t, "vendor.pem", fx.vendor.ChainPEM())
	e.vendorKey = writeFile(t, "vendor.key", fx.vendor.KeyPEM())
	return e
}

func (e *env) now() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.clock
}

func (e *env) setNow(t time.Time) {
	e.mu.Lock()
	e.clock = t
	e.mu.Unlock()
}

func (e *env) options() Options {
	log := logrus.New()
	log.SetOutput(&bytes.Buffer{})
	log.SetLevel(logrus.DebugLevel)
	log.AddHook(e.logs)
	return Options{
		AppleID: testAccount, PasswordHash: testHash,
		VendorCertFile: e.vendorCert, VendorKeyFile: e.vendorKey,
		Dir: e.dir, BaseURL: e.stub.URL(), Roots: e.fx.ca.CertPool(), Hostname: testHost,
		Log: log, Now: e.now,
	}
}

// manager makes a Manager on the env's folder, as a start of xapsd would;
// keys come from the fixture's pool to keep the tests quick.
func (e *env) manager(t *testing.T) *Manager {
	t.Helper()
	m, err := New(e.options())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	m.newKey = func() (*rsa.PrivateKey, error) {
		return e.fx.keys[int(e.keyNo.Add(1))%len(e.fx.keys)], nil
	}
	return m
}

// runUntilIdle runs m until it plans nothing before "now" any more, and
// returns the credentials it announced and the last plan.
func runUntilIdle(t *testing.T, e *env, m *Manager) ([]*creds.Credential, plan) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu    sync.Mutex
		got   []*creds.Credential
		last  plan
		plans int
	)
	m.afterPlan = func(p plan) {
		mu.Lock()
		defer mu.Unlock()
		last = p
		if plans++; plans > 20 {
			t.Errorf("more than 20 plans: a loop (last %v at %v)", p.kind, p.at)
			cancel()
		}
		if p.kind == planNothing || p.at.After(e.now()) {
			cancel()
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Run(ctx, func(c *creds.Credential) {
			mu.Lock()
			got = append(got, c)
			mu.Unlock()
		})
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("Run did not settle within 30 s")
	}
	m.afterPlan = nil
	mu.Lock()
	defer mu.Unlock()
	return got, last
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func readAttempts(t *testing.T, dir string) attempts {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, attemptsFile))
	if err != nil {
		t.Fatal(err)
	}
	var a attempts
	if err := json.Unmarshal(data, &a); err != nil {
		t.Fatal(err)
	}
	return a
}

func checkMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s: mode %o, want %o", path, got, want)
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// checkIssued checks that the folder holds exactly what the stand-in
// issued in request r, each with the key it was issued for.
func checkIssued(t *testing.T, e *env, r stubRequest) {
	t.Helper()
	st := store{dir: e.dir}
	for _, svc := range services {
		h, err := st.load(svc)
		if err != nil {
			t.Fatalf("%s: %v", svc.Name, err)
		}
		if !h.Cert.Equal(r.Issued[svc.No]) {
			t.Errorf("%s: stored certificate is not the one issued for CertRequestNo %d", svc.Name, svc.No)
		}
		checkMode(t, st.servicePath(svc), 0o600)
	}
}

func TestNewCertificate(t *testing.T) {
	e := newEnv(t, stubNormal)
	m := e.manager(t)
	if err := m.Status(); !errors.Is(err, ErrNotStored) {
		t.Fatalf("Status before the request: %v", err)
	}
	// While Apple works on the request, the attempt and the keys are on
	// disk already.
	var (
		duringMu sync.Mutex
		during   []string
	)
	e.stub.during = func(kind string) {
		duringMu.Lock()
		defer duringMu.Unlock()
		data, err := os.ReadFile(filepath.Join(e.dir, attemptsFile))
		if err != nil || !strings.Contains(string(data), `"outcome": "sent"`) {
			during = append(during, fmt.Sprintf("attempt record while sending: %q, %v", data, err))
		}
		keys, err := store{dir: e.dir}.loadRequestKeys()
		if err != nil || len(keys) != 5 {
			during = append(during, fmt.Sprintf("request keys while sending: %d, %v", len(keys), err))
		}
	}
	if _, err := m.Stored(); !errors.Is(err, ErrNotStored) {
		t.Fatalf("Stored before the request: %v", err)
	}
	got, last := runUntilIdle(t, e, m)

	reqs := e.stub.seen()
	if len(reqs) != 1 || reqs[0].Kind != "new" {
		t.Fatalf("requests %+v, want one /new", reqs)
	}
	duringMu.Lock()
	for _, p := range during {
		t.Error(p)
	}
	duringMu.Unlock()
	checkIssued(t, e, reqs[0])
	checkMode(t, e.dir, 0o700)
	checkMode(t, filepath.Join(e.dir, attemptsFile), 0o600)
	mail := reqs[0].Issued[mailNo]
	if len(got) != 1 || got[0].Topic != testpki.SubjectUID(mail) || !got[0].Certificate.Leaf.Equal(mail) {
		t.Fatalf("onChange got %+v, want the mail certificate", got)
	}
	if !strings.HasPrefix(got[0].Topic, "com.apple.mail.XServer.") || got[0].Mode != creds.ModeCertificate {
		t.Errorf("credential topic %q mode %v", got[0].Topic, got[0].Mode)
	}
	stored, err := m.Stored()
	if err != nil || stored.Topic != got[0].Topic {
		t.Fatalf("Stored = %v, %v", stored, err)
	}
	if err := m.Status(); err != nil {
		t.Errorf("Status = %v", err)
	}
	a := readAttempts(t, e.dir)
	if a.New == nil || a.New.Outcome != "ok" || !a.New.Time.Equal(e.now()) || a.Renew != nil {
		t.Errorf("attempt record %+v / %+v", a.New, a.Renew)
	}
	for _, f := range []string{requestKeysFile, answerFile} {
		if exists(filepath.Join(e.dir, f)) {
			t.Errorf("%s left behind after success", f)
		}
	}
	// Next: renewal 30 days before the end, not a loop.
	if last.kind != planRenew || !last.at.Equal(mail.NotAfter.Add(-30*24*time.Hour)) {
		t.Errorf("next plan %v at %v, want renew at NotAfter-30d", last.kind, last.at)
	}
	if len(e.logs.find(logrus.InfoLevel, "stored a new Apple push certificate")) != 1 {
		t.Error("no log line for the stored certificate")
	}
}

// TestMalformedHeaders: the answer carries the two nameless header lines
// Apple sent in 2023. net/http refuses such a response; the
// manager must still store the certificates.
func TestMalformedHeaders(t *testing.T) {
	e := newEnv(t, stubMalformed)
	m := e.manager(t)
	got, _ := runUntilIdle(t, e, m)
	reqs := e.stub.seen()
	if len(reqs) != 1 || len(got) != 1 {
		t.Fatalf("%d requests, %d credentials", len(reqs), len(got))
	}
	checkIssued(t, e, reqs[0])
	for _, line := range []string{"1;: mode=block", "max-age=31536000;: includeSubdomains"} {
		found := false
		for _, entry := range e.logs.find(logrus.WarnLevel, "malformed header line") {
			if strings.Contains(entry.Data["line"].(string), line) {
				found = true
			}
		}
		if !found {
			t.Errorf("no warning for skipped line %q", line)
		}
	}

	// The point of the exercise: Go's own reader loses this answer.
	var raw bytes.Buffer
	writeStubResponse(&raw, 200, []string{"1;: mode=block", "max-age=31536000;: includeSubdomains"}, stubAnswer(reqs[0].Issued))
	if _, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw.Bytes())), nil); err == nil {
		t.Error("net/http accepts the malformed answer; the test no longer shows anything")
	}
}

func TestChunkedAnswer(t *testing.T) {
	e := newEnv(t, stubChunked)
	m := e.manager(t)
	got, _ := runUntilIdle(t, e, m)
	reqs := e.stub.seen()
	if len(reqs) != 1 || len(got) != 1 {
		t.Fatalf("%d requests, %d credentials", len(reqs), len(got))
	}
	checkIssued(t, e, reqs[0])
}

// TestCutConnection: Apple issues the certificates but the answer is lost.
// No second /new may go out within 24 hours, even after restarts.
func TestCutConnection(t *testing.T) {
	e := newEnv(t, stubCut)
	t0 := e.now()
	m := e.manager(t)
	got, last := runUntilIdle(t, e, m)
	if reqs := e.stub.seen(); len(reqs) != 1 || len(reqs[0].Issued) != 5 {
		t.Fatalf("requests %+v, want one that was issued", reqs)
	}
	if len(got) != 0 || exists(m.MailFile()) {
		t.Fatal("a certificate was stored from a cut answer")
	}
	if last.kind != planNew || !last.at.Equal(t0.Add(24*time.Hour)) {
		t.Errorf("next plan %v at %v, want new at start+24h", last.kind, last.at)
	}
	a := readAttempts(t, e.dir)
	if a.New == nil || !strings.Contains(a.New.Outcome, "error") || !a.New.Time.Equal(t0) {
		t.Errorf("attempt record %+v", a.New)
	}
	if err := m.Status(); err == nil || !strings.Contains(err.Error(), "unexpected EOF") {
		t.Errorf("Status = %v, want the read error", err)
	}
	// The keys and what arrived are kept for recovery.
	if !exists(filepath.Join(e.dir, requestKeysFile)) || !exists(filepath.Join(e.dir, answerFile)) {
		t.Error("request keys or partial answer not kept")
	}

	// Restarts: at once, and 23 hours later.
	e.stub.setMode(stubNormal)
	for _, after := range []time.Duration{0, time.Minute, 23 * time.Hour} {
		e.setNow(t0.Add(after))
		m2 := e.manager(t)
		if _, last := runUntilIdle(t, e, m2); last.kind != planNew || !last.at.Equal(t0.Add(24*time.Hour)) {
			t.Errorf("restart after %v: plan %v at %v", after, last.kind, last.at)
		}
		if n := len(e.stub.seen()); n != 1 {
			t.Fatalf("restart after %v: %d requests, want still 1", after, n)
		}
		if err := m2.Status(); err == nil || !strings.Contains(err.Error(), "next request to Apple's certificate service at") {
			t.Errorf("restart after %v: Status = %v", after, err)
		}
	}

	// A day later one new request is allowed, and it works.
	e.setNow(t0.Add(24*time.Hour + time.Second))
	m3 := e.manager(t)
	got, _ = runUntilIdle(t, e, m3)
	reqs := e.stub.seen()
	if len(reqs) != 2 || len(got) != 1 {
		t.Fatalf("a day later: %d requests, %d credentials", len(reqs), len(got))
	}
	checkIssued(t, e, reqs[1])
}

func TestDiscontinuedServiceIsExplainedInOneLineAndNotAskedAgainOnRestart(t *testing.T) {
	e := newEnv(t, stubDiscontinued)
	t0 := e.now()
	m := e.manager(t)
	got, last := runUntilIdle(t, e, m)
	if n := len(e.stub.seen()); n != 1 || len(got) != 0 {
		t.Fatalf("%d requests, %d credentials", n, len(got))
	}
	err := m.Status()
	if !errors.Is(err, ErrDiscontinued) || !errors.Is(err, ErrNotStored) {
		t.Fatalf("Status = %v, want ErrDiscontinued and ErrNotStored", err)
	}
	// One log line that explains it all.
	lines := e.logs.find(logrus.ErrorLevel, "-80010")
	if len(lines) != 1 {
		t.Fatalf("%d error lines about -80010, want 1", len(lines))
	}
	for _, s := range []string{"2024-10-29", "certificateFilePem", "certificateFileP12", "keyFileP8",
		"com.apple.mobilemail.push.*", "com.apple.mail.*", "ServiceType is Invalid."} {
		if !strings.Contains(lines[0].Message, s) {
			t.Errorf("-80010 message lacks %q: %s", s, lines[0].Message)
		}
	}
	if last.kind != planNew || !last.at.Equal(t0.Add(24*time.Hour)) {
		t.Errorf("next plan %v at %v, want new a day later", last.kind, last.at)
	}
	// A restart does not ask again.
	e.setNow(t0.Add(time.Hour))
	runUntilIdle(t, e, e.manager(t))
	if n := len(e.stub.seen()); n != 1 {
		t.Errorf("%d requests after a restart, want 1", n)
	}
}

// obtain runs a first /new and returns the issued request.
func obtain(t *testing.T, e *env) stubRequest {
	t.Helper()
	runUntilIdle(t, e, e.manager(t))
	reqs := e.stub.seen()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	return reqs[0]
}

func TestRenewalComesThirtyDaysBeforeTheEndWithTheSameKeys(t *testing.T) {
	e := newEnv(t, stubNormal)
	first := obtain(t, e)
	oldMail := first.Issued[mailNo]
	before, _ := store{dir: e.dir}.load(services[mailNo])

	// 31 days before the end: nothing yet.
	e.setNow(oldMail.NotAfter.Add(-31 * 24 * time.Hour))
	_, last := runUntilIdle(t, e, e.manager(t))
	if n := len(e.stub.seen()); n != 1 || last.kind != planRenew || !last.at.Equal(oldMail.NotAfter.Add(-30*24*time.Hour)) {
		t.Fatalf("%d requests, plan %v at %v", n, last.kind, last.at)
	}

	// 29 days before: a renewal with the same keys and the old serials.
	e.setNow(oldMail.NotAfter.Add(-29 * 24 * time.Hour))
	m := e.manager(t)
	got, last := runUntilIdle(t, e, m)
	reqs := e.stub.seen()
	if len(reqs) != 2 || reqs[1].Kind != "renew" || len(got) != 1 {
		t.Fatalf("requests %d (last %q), credentials %d", len(reqs), reqs[len(reqs)-1].Kind, len(got))
	}
	renew := reqs[1]
	for _, svc := range services {
		if !renew.Keys[svc.No].Equal(first.Keys[svc.No]) {
			t.Errorf("%s: renewal used a different key", svc.Name)
		}
		if want := first.Issued[svc.No].SerialNumber.Text(16); renew.Serials[svc.No] != want {
			t.Errorf("%s: serial %q sent, want %q", svc.Name, renew.Serials[svc.No], want)
		}
	}
	checkIssued(t, e, renew)
	newMail := renew.Issued[mailNo]
	if got[0].Topic != testpki.SubjectUID(oldMail) {
		t.Errorf("topic changed on renewal: %q, was %q", got[0].Topic, testpki.SubjectUID(oldMail))
	}
	if !got[0].NotAfter.Equal(newMail.NotAfter) || !newMail.NotAfter.After(oldMail.NotAfter) {
		t.Errorf("NotAfter %v, want the renewed %v", got[0].NotAfter, newMail.NotAfter)
	}
	after, _ := store{dir: e.dir}.load(services[mailNo])
	if !after.Key.Equal(before.Key) {
		t.Error("the mail key changed on renewal")
	}
	a := readAttempts(t, e.dir)
	if a.Renew == nil || a.Renew.Outcome != "ok" || a.Renew.Failures != 0 {
		t.Errorf("renew record %+v", a.Renew)
	}
	if last.kind != planRenew || !last.at.Equal(newMail.NotAfter.Add(-30*24*time.Hour)) {
		t.Errorf("after renewal: plan %v at %v", last.kind, last.at)
	}
}

// TestRenewFailures: failed renewals keep the certificate and back off in
// hours, across restarts; -80010 waits a day.
func TestRenewFailures(t *testing.T) {
	e := newEnv(t, stubNormal)
	first := obtain(t, e)
	mailBefore, err := os.ReadFile(filepath.Join(e.dir, "mail.pem"))
	if err != nil {
		t.Fatal(err)
	}
	e.stub.setMode(stubHTTP500)
	t1 := first.Issued[mailNo].NotAfter.Add(-20 * 24 * time.Hour)
	e.setNow(t1)

	m := e.manager(t)
	m.jitter = 0.5 // no stretch: exact 1h, 2h …
	got, last := runUntilIdle(t, e, m)
	if n := len(e.stub.seen()); n != 2 || len(got) != 0 {
		t.Fatalf("%d requests, %d credentials", n, len(got))
	}
	if last.kind != planRenew || !last.at.Equal(t1.Add(time.Hour)) {
		t.Errorf("after 1 failure: plan %v at %v, want renew at +1h", last.kind, last.at)
	}
	if err := m.Status(); err != nil {
		t.Errorf("Status = %v; the current certificate is still good", err)
	}
	if len(e.logs.find(logrus.WarnLevel, "the current one stays in use")) != 1 {
		t.Error("no warning about the failed renewal")
	}
	if r := readAttempts(t, e.dir).Renew; r == nil || r.Failures != 1 || !strings.Contains(r.Outcome, "HTTP 500") {
		t.Errorf("renew record %+v", r)
	}

	// A restart half an hour later waits for the backoff.
	e.setNow(t1.Add(30 * time.Minute))
	m = e.manager(t)
	m.jitter = 0.5
	if _, last = runUntilIdle(t, e, m); !last.at.Equal(t1.Add(time.Hour)) || len(e.stub.seen()) != 2 {
		t.Errorf("restart: plan at %v, %d requests", last.at, len(e.stub.seen()))
	}

	// After the hour: second try, then two hours.
	t2 := t1.Add(time.Hour)
	e.setNow(t2)
	m = e.manager(t)
	m.jitter = 0.5
	if _, last = runUntilIdle(t, e, m); len(e.stub.seen()) != 3 || !last.at.Equal(t2.Add(2*time.Hour)) {
		t.Errorf("second failure: %d requests, plan at %v, want +2h", len(e.stub.seen()), last.at)
	}

	// -80010: a day.
	e.stub.setMode(stubDiscontinued)
	t3 := t2.Add(2 * time.Hour)
	e.setNow(t3)
	m = e.manager(t)
	m.jitter = 0.5
	if _, last = runUntilIdle(t, e, m); len(e.stub.seen()) != 4 || !last.at.Equal(t3.Add(24*time.Hour)) {
		t.Errorf("-80010: %d requests, plan at %v, want +24h", len(e.stub.seen()), last.at)
	}
	if err := m.Status(); err != nil {
		t.Errorf("Status after -80010 with a good certificate = %v", err)
	}
	mailAfter, _ := os.ReadFile(filepath.Join(e.dir, "mail.pem"))
	if !bytes.Equal(mailBefore, mailAfter) {
		t.Error("failed renewals changed the stored certificate")
	}
}

func TestNoVendorIdentityMeansNoRequestAndSaysWhy(t *testing.T) {
	e := newEnv(t, stubNormal)
	o := e.options()
	o.VendorCertFile, o.VendorKeyFile = "", ""
	m, err := New(o)
	if err != nil {
		t.Fatalf("New without vendor identity: %v", err)
	}
	_, last := runUntilIdle(t, e, m)
	if last.kind != planNothing || len(e.stub.seen()) != 0 {
		t.Fatalf("plan %v, %d requests", last.kind, len(e.stub.seen()))
	}
	err = m.Status()
	if !errors.Is(err, ErrNoVendor) || !errors.Is(err, ErrNotStored) {
		t.Fatalf("Status = %v", err)
	}
	for _, s := range []string{"appleIdVendorCertificate", "appleIdVendorKey", "macOS Server", "docs/credentials.md"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("Status lacks %q: %v", s, err)
		}
	}
	if len(e.logs.find(logrus.ErrorLevel, "appleIdVendorCertificate")) != 1 {
		t.Error("the missing vendor identity is not logged once as an error")
	}

	// An imported certificate is served all the same; renewal is not
	// possible and the log says so.
	l := issueLegacy(t, e, time.Time{}, 5)
	if _, err := applecerts.ImportLegacy(l.json(t), e.dir, e.now()); err != nil {
		t.Fatal(err)
	}
	m, _ = New(o)
	if err := m.Status(); err != nil {
		t.Errorf("Status with an imported certificate = %v", err)
	}
	if c, err := m.Stored(); err != nil || c.Topic != l.topic {
		t.Errorf("Stored = %v, %v", c, err)
	}
	runUntilIdle(t, e, m)
	if len(e.logs.find(logrus.WarnLevel, "cannot be renewed")) != 1 {
		t.Error("no warning that the certificate cannot be renewed")
	}
}

// TestRecoverAnswer: the process died after saving Apple's answer but
// before storing the certificates; the next start stores them without a
// request.
func TestRecoverAnswer(t *testing.T) {
	e := newEnv(t, stubNormal)
	fx := getFixture(t)
	st := store{dir: e.dir}
	if err := st.ensure(); err != nil {
		t.Fatal(err)
	}
	var keys [len(services)]*rsa.PrivateKey
	issued := map[int]*x509.Certificate{}
	for i := range keys {
		keys[i] = fx.keys[i]
		c, err := e.stub.issue(i, &keys[i].PublicKey, "")
		if err != nil {
			t.Fatal(err)
		}
		issued[i] = c
	}
	if err := st.saveRequestKeys(keys); err != nil {
		t.Fatal(err)
	}
	var raw bytes.Buffer
	writeStubResponse(&raw, 200, nil, stubAnswer(issued))
	if err := os.WriteFile(st.path(answerFile), raw.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := st.writeAttempts(attempts{New: &attempt{Time: e.now(), Outcome: outcomeSent}}); err != nil {
		t.Fatal(err)
	}
	got, _ := runUntilIdle(t, e, e.manager(t))
	if len(e.stub.seen()) != 0 || len(got) != 1 {
		t.Fatalf("%d requests, %d credentials", len(e.stub.seen()), len(got))
	}
	checkIssued(t, e, stubRequest{Issued: issued})
	if exists(st.path(answerFile)) || exists(st.path(requestKeysFile)) {
		t.Error("recovery files left behind")
	}
}

func TestNewRefusesIncompleteOptionsNamingWhatIsMissing(t *testing.T) {
	e := newEnv(t, stubNormal)
	fx := getFixture(t)
	other, err := fx.ca.Issue(testpki.IssueOptions{CommonName: "other", KeyType: testpki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		change func(*Options)
		want   string
	}{
		{"no apple id", func(o *Options) { o.AppleID = "" }, "appleId is empty"},
		{"bad hash", func(o *Options) { o.PasswordHash = "secret" }, "64 hexadecimal"},
		{"no dir", func(o *Options) { o.Dir = "" }, "no state folder"},
		{"http url", func(o *Options) { o.BaseURL = "http://example.com/x" }, "must be https"},
		{"key without cert", func(o *Options) { o.VendorCertFile = "" }, "appleIdVendorCertificate must be set"},
		{"cert without key", func(o *Options) { o.VendorKeyFile = "" }, "appleIdVendorKey must be set"},
		{"missing cert file", func(o *Options) { o.VendorCertFile = "/nonexistent/v.pem" }, "read vendor certificate /nonexistent/v.pem"},
		{"wrong key", func(o *Options) {
			o.VendorKeyFile = writeFile(t, "k.pem", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(fx.keys[0])}))
		}, "does not belong to the first certificate"},
		{"EC key", func(o *Options) { o.VendorKeyFile = writeFile(t, "k.pem", other.KeyPKCS8PEM()) }, "not an RSA key"},
		{"key file with a certificate only", func(o *Options) { o.VendorKeyFile = e.vendorCert }, "no -----BEGIN RSA PRIVATE KEY"},
		{"cert file with a key only", func(o *Options) { o.VendorCertFile = e.vendorKey }, "no -----BEGIN CERTIFICATE"},
		{"encrypted key", func(o *Options) {
			o.VendorKeyFile = writeFile(t, "k.pem", []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"))
		}, "encrypted"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := e.options()
			tc.change(&o)
			_, err := New(o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New = %v, want %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), testHash) {
				t.Error("error shows the password hash")
			}
		})
	}
	// A PKCS#8 vendor key is as good as PKCS#1.
	o := e.options()
	o.VendorKeyFile = writeFile(t, "v8.pem", fx.vendor.KeyPKCS8PEM())
	if _, err := New(o); err != nil {
		t.Errorf("PKCS#8 vendor key: %v", err)
	}
}

func TestStateFolderModes(t *testing.T) {
	e := newEnv(t, stubNormal)
	if err := os.MkdirAll(e.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(e.dir, 0o755)
	obtain(t, e)
	checkMode(t, e.dir, 0o700)
	entries, err := os.ReadDir(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range entries {
		checkMode(t, filepath.Join(e.dir, de.Name()), 0o600)
	}
	if len(entries) != 6 { // five certificates and attempts.json
		t.Errorf("%d files in the state folder", len(entries))
	}
}

// TestUnreadableAttemptRecord: a record that cannot be read counts as a
// request sent when the file was last written.
func TestUnreadableAttemptRecord(t *testing.T) {
	e := newEnv(t, stubNormal)
	st := store{dir: e.dir}
	if err := st.ensure(); err != nil {
		t.Fatal(err)
	}
	p := st.path(attemptsFile)
	if err := os.WriteFile(p, []byte("{torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	written := e.now().Add(-time.Hour)
	if err := os.Chtimes(p, written, written); err != nil {
		t.Fatal(err)
	}
	_, last := runUntilIdle(t, e, e.manager(t))
	if len(e.stub.seen()) != 0 || last.kind != planNew || !last.at.Equal(written.Add(24*time.Hour)) {
		t.Errorf("%d requests, plan %v at %v, want new at mtime+24h", len(e.stub.seen()), last.kind, last.at)
	}
}

// TestStoreIssued: certificates that do not belong to the keys sent, a
// mail certificate without a topic, and one older than the stored one are
// all left out; the rest is stored.
func TestStoreIssued(t *testing.T) {
	e := newEnv(t, stubNormal)
	fx := getFixture(t)
	m := e.manager(t)
	keys := map[int]*rsa.PrivateKey{}
	certs := map[int]issued{}
	for i := range services {
		keys[i] = fx.keys[i]
		c, err := e.stub.issue(i, &keys[i].PublicKey, "")
		if err != nil {
			t.Fatal(err)
		}
		certs[i] = issued{No: i, Cert: c}
	}
	// Calendar issued for another key; no alerts at all; mail without UID.
	certs[0] = issued{No: 0, Cert: certs[1].Cert}
	delete(certs, 4)
	noUID, err := fx.ca.Issue(testpki.IssueOptions{CommonName: "no topic"})
	if err != nil {
		t.Fatal(err)
	}
	certs[mailNo] = issued{No: mailNo, Cert: noUID.Cert}
	keys[mailNo] = noUID.Key.(*rsa.PrivateKey)

	mailStored, problems, err := m.storeIssued(certs, keys)
	if err != nil || mailStored {
		t.Fatalf("mail stored %v, %v", mailStored, err)
	}
	want := []string{"has no UID attribute (the push topic)", "calendar certificate of the answer is not for the key", "no alerts certificate"}
	if len(problems) != len(want) {
		t.Fatalf("problems %q", problems)
	}
	for i, w := range want {
		if !strings.Contains(problems[i], w) {
			t.Errorf("problem %d: %q, want %q", i, problems[i], w)
		}
	}
	st := store{dir: e.dir}
	for _, svc := range services {
		if got := exists(st.servicePath(svc)); got != (svc.Name == "contact" || svc.Name == "mgmt") {
			t.Errorf("%s stored: %v", svc.Name, got)
		}
	}

	// The same contact certificate again is not newer: left out.
	_, problems, _ = m.storeIssued(map[int]issued{1: certs[1]}, keys)
	if len(problems) == 0 || !strings.Contains(strings.Join(problems, ";"), "contact certificate of the answer is not newer") {
		t.Errorf("problems %q", problems)
	}
	// The answer says so as a whole when the mail one is missing.
	_, err = m.storeAnswer(&httpResponse{Status: 200, Body: stubAnswer(map[int]*x509.Certificate{1: certs[1].Cert})}, keys, m.log)
	if err == nil || !strings.Contains(err.Error(), "no usable mail certificate") {
		t.Errorf("storeAnswer without mail: %v", err)
	}
}

// TestNewWritesNothing: xapsd --check-config builds a Manager too, maybe
// as root; it must not leave a folder the daemon's user cannot write.
func TestNewWritesNothing(t *testing.T) {
	e := newEnv(t, stubNormal)
	m := e.manager(t)
	if exists(e.dir) {
		t.Error("New created the state folder")
	}
	if _, err := m.Stored(); !errors.Is(err, ErrNotStored) {
		t.Errorf("Stored = %v", err)
	}
}

// With several daemons on one registry, a request to Apple runs only when
// Exclusive lets it: another daemon asking now means no request here.
func TestRequestsWaitForExclusive(t *testing.T) {
	e := newEnv(t, stubNormal)
	o := e.options()
	asked := make(chan struct{}, 1)
	o.Exclusive = func(context.Context, func() error) (bool, error) {
		select {
		case asked <- struct{}{}:
		default:
		}
		return false, nil // another daemon is asking Apple
	}
	m, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx, nil) }()
	select {
	case <-asked:
	case <-time.After(10 * time.Second):
		t.Fatal("the manager never wanted to ask Apple")
	}
	cancel()
	<-done
	if n := len(e.stub.seen()); n != 0 {
		t.Errorf("%d requests reached Apple while another daemon held the turn", n)
	}
	// Given the turn, it asks.
	o.Exclusive = func(_ context.Context, work func() error) (bool, error) { return true, work() }
	m, _ = New(o)
	m.newKey = func() (*rsa.PrivateKey, error) { return e.fx.keys[int(e.keyNo.Add(1))%len(e.fx.keys)], nil }
	if got, _ := runUntilIdle(t, e, m); len(got) != 1 || len(e.stub.seen()) != 1 {
		t.Errorf("with the turn: %d credentials, %d requests", len(got), len(e.stub.seen()))
	}
}
