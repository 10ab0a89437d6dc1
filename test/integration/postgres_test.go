package integration

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
	"github.com/xapsd/xapsd/internal/testutil/pgtest"
	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

// Several xapsd binaries sharing one registry in a real, throw-away
// PostgreSQL, pushing to one APNs stand-in (or each to its own).

type pgGroup struct {
	pg   *pgtest.Cluster
	apns *fakeapns.Server   // the stand-in every daemon pushes to; daemon 0's with apnsEach
	push []*fakeapns.Server // each daemon's stand-in
	env  []string           // each daemon's SSL_CERT_FILE, for its stand-in's CA
	dirs []string
	addr []string
	d    []*daemon
}

type pgGroupOptions struct {
	extra string // more configuration lines for every daemon
	// apnsEach gives every daemon an APNs stand-in of its own, so that a
	// push shows which daemon sent it.
	apnsEach bool
	// pg is the cluster to use (nil: a new one); urls, when set, are the
	// daemons' databaseURLs instead of pg.URL (a gate in front of it).
	pg   *pgtest.Cluster
	urls []string
}

func newPGGroup(t *testing.T, n int, extra string) *pgGroup {
	t.Helper()
	return newPGGroupWith(t, n, pgGroupOptions{extra: extra})
}

func startPG(t *testing.T) *pgtest.Cluster {
	t.Helper()
	return pgtest.StartT(t, pgtest.Options{})
}

func newPGGroupWith(t *testing.T, n int, o pgGroupOptions) *pgGroup {
	t.Helper()
	pg := o.pg
	if pg == nil {
		pg = startPG(t)
	}
	ca, err := testpki.NewCA("test push CA")
	if err != nil {
		t.Fatal(err)
	}
	g := &pgGroup{pg: pg}
	for i := 0; i < n; i++ {
		srv := g.apns
		if srv == nil || o.apnsEach {
			if srv, err = fakeapns.Start(fakeapns.Options{}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { srv.Close() })
			if g.apns == nil {
				g.apns = srv
			}
		}
		dir := testutil.TempDir(t)
		if err := srv.WriteCAFile(filepath.Join(dir, "apns-ca.pem")); err != nil {
			t.Fatal(err)
		}
		writePushCert(t, ca, dir, "push", topicA)
		url := pg.URL
		if o.urls != nil {
			url = o.urls[i]
		}
		g.push = append(g.push, srv)
		g.env = append(g.env, "SSL_CERT_FILE="+filepath.Join(dir, "apns-ca.pem"))
		g.dirs = append(g.dirs, dir)
		g.addr = append(g.addr, writeConfig(t, dir, fmt.Sprintf("apnsEndpoint: %s\ncertificateFilePem: push.pem\n"+
			"certificateFilePemKey: push.key\ndatabaseURL: %s\napnsMinInterval: 0\nloglevel: info\n%s", srv.URL, url, o.extra)))
		g.d = append(g.d, nil)
	}
	return g
}

// missingInDB counts the acknowledged registrations that are not in the
// database.
func (g *pgGroup) missingInDB(t *testing.T, acked map[registry.Key]bool) int {
	t.Helper()
	out, err := g.pg.SQL("SELECT username || ' ' || device_token FROM xapsd_registrations")
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		have[l] = true
	}
	lost := 0
	for k := range acked {
		if !have[k.User+" "+k.DeviceToken] {
			lost++
		}
	}
	return lost
}

func (g *pgGroup) start(t *testing.T, i int) *daemon {
	t.Helper()
	g.d[i] = startDaemon(t, g.dirs[i], g.addr[i], g.env[i])
	return g.d[i]
}

// startAll starts every daemon of the group at once and waits until each
// answers.
func (g *pgGroup) startAll(t *testing.T) {
	t.Helper()
	for i := range g.d {
		g.d[i] = launch(t, g.dirs[i], []string{xapsdBin, "--config", filepath.Join(g.dirs[i], "xapsd.yaml")}, g.env[i])
		g.d[i].addr = g.addr[i]
	}
	for _, d := range g.d {
		d.waitAnswering()
	}
}

// waitPush waits for a push to tok after the first `after` requests.
func (g *pgGroup) waitPush(t *testing.T, after int, tok string) bool {
	t.Helper()
	return testutil.Wait(5*time.Second, func() bool {
		reqs := g.apns.Requests()
		return perToken(reqs[min(after, len(reqs)):])[tok] > 0
	})
}

func TestPostgresRegisterOnOneNotifyOnAnother(t *testing.T) {
	g := newPGGroup(t, 3, "")
	for i := range 3 {
		g.start(t, i)
	}
	// Register on A, new mail reported to B: B pushes, within a second.
	if status, body := post(t, g.addr[0], "/register", registerBody("alice@example.com", acc, token(1))); status != 200 || body != topicA {
		t.Fatalf("register on A: %d %q", status, body)
	}
	registered := time.Now()
	status := 0
	if !testutil.Wait(5*time.Second, func() bool {
		status, _ = post(t, g.addr[1], "/notify", notifyBody("alice@example.com", "INBOX", "MessageNew"))
		return status == 200
	}) {
		t.Fatalf("B never learned of A's registration (/notify %d)", status)
	}
	t.Logf("A's registration known to B after %v", time.Since(registered))
	if !g.waitPush(t, 0, token(1)) {
		t.Fatal("no push from B for the device registered on A")
	}

	// kill -9 A: B and C serve A's users with everything A acknowledged.
	for i := 2; i < 40; i++ {
		if status, _ := post(t, g.addr[0], "/register", registerBody(fmt.Sprintf("u%d@example.com", i), acc, token(i))); status != 200 {
			t.Fatalf("register on A: %d", status)
		}
	}
	g.d[0].kill()
	before := g.apns.Count()
	for i := 2; i < 40; i++ {
		status, _ := post(t, g.addr[2], "/notify", notifyBody(fmt.Sprintf("u%d@example.com", i), "INBOX", "MessageNew"))
		if status != 200 {
			t.Errorf("C does not know u%d, registered on A before A was killed (%d)", i, status)
		}
	}
	if _, err := g.apns.WaitRequests(int(before)+38, 10*time.Second); err != nil {
		t.Errorf("pushes for A's users from C: %v", err)
	}

	// A 410 seen by B stops pushes from C.
	g.apns.SetResponder(func(r fakeapns.Request) fakeapns.Response {
		if r.Token == token(1) {
			return fakeapns.Response{Status: 410, Reason: "Unregistered", Timestamp: time.Now().Add(time.Minute).UnixMilli()}
		}
		return fakeapns.Response{}
	})
	post(t, g.addr[1], "/notify", notifyBody("alice@example.com", "INBOX", "MessageNew"))
	if !testutil.Wait(5*time.Second, func() bool {
		status, _ = post(t, g.addr[2], "/notify", notifyBody("alice@example.com", "INBOX", "MessageNew"))
		return status == 404
	}) {
		t.Fatalf("C still knows the device B removed after Apple's 410 (/notify %d)", status)
	}
}

func TestPostgresStoppedUnderLoad(t *testing.T) {
	g := newPGGroup(t, 1, "")
	g.start(t, 0)
	addr := g.addr[0]
	for i := range 20 {
		if status, _ := post(t, addr, "/register", registerBody(fmt.Sprintf("k%d@example.com", i), acc, token(i))); status != 200 {
			t.Fatalf("register: %d", status)
		}
	}
	var mu sync.Mutex
	acked := map[registry.Key]bool{}
	notifyFailed, refused := 0, 0
	stop := make(chan struct{})
	var wg sync.WaitGroup
	hc := &http.Client{Timeout: 10 * time.Second}
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if w%2 == 0 {
					resp, err := hc.Post("http://"+addr+"/notify", "application/json",
						strings.NewReader(notifyBody(fmt.Sprintf("k%d@example.com", i%20), "INBOX", "MessageNew")))
					if err == nil {
						resp.Body.Close()
					}
					mu.Lock()
					if err != nil || resp.StatusCode != 200 {
						notifyFailed++
					}
					mu.Unlock()
					continue
				}
				k := registry.Key{User: fmt.Sprintf("w%d-%d@example.com", w, i), AccountID: acc, DeviceToken: token(1000 + w*100000 + i)}
				resp, err := hc.Post("http://"+addr+"/register", "application/json", strings.NewReader(registerBody(k.User, k.AccountID, k.DeviceToken)))
				if err != nil {
					continue
				}
				resp.Body.Close()
				mu.Lock()
				switch resp.StatusCode {
				case 200:
					acked[k] = true
				case 503:
					refused++
				default:
					t.Errorf("register answered %d", resp.StatusCode)
				}
				mu.Unlock()
			}
		}()
	}
	// Load, then the database goes away under it until registrations
	// are refused, then it comes back under the same load.
	ackedCount := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	refusedCount := func() int { mu.Lock(); defer mu.Unlock(); return refused }
	testutil.WaitFor(t, "registrations acknowledged under load", func() bool { return ackedCount() >= 50 })
	g.pg.Stop()
	testutil.WaitWithin(t, 30*time.Second, "a few registrations refused while PostgreSQL is down", func() bool { return refusedCount() >= 4 })
	mu.Lock()
	refusedWhileDown := refused
	mu.Unlock()
	if err := g.pg.Restart(); err != nil {
		t.Fatal(err)
	}
	// Registrations work again without restarting xapsd.
	if !testutil.Wait(15*time.Second, func() bool {
		status, _ := post(t, addr, "/register", registerBody("after@example.com", acc, token(999)))
		return status == 200
	}) {
		t.Fatal("registrations do not work again after PostgreSQL came back")
	}
	back := ackedCount()
	testutil.WaitFor(t, "registrations acknowledged after PostgreSQL came back", func() bool { return ackedCount() >= back+50 })
	close(stop)
	wg.Wait()
	if notifyFailed > 0 {
		t.Errorf("%d /notify failed while PostgreSQL was down; they must be served from memory", notifyFailed)
	}
	if refusedWhileDown == 0 {
		t.Error("no /register was refused with 503 while PostgreSQL was down")
	}
	// Nothing acknowledged is lost: everything is in the database.
	lost := g.missingInDB(t, acked)
	t.Logf("%d registrations acknowledged, %d refused with 503 (%d while down), %d lost", len(acked), refused, refusedWhileDown, lost)
	if lost > 0 {
		t.Errorf("%d acknowledged registrations are not in the database", lost)
	}
}

func TestPostgresKill9AcrossDaemonsLosesNothing(t *testing.T) {
	g := newPGGroup(t, 3, "loglevel: warn\n")
	for i := range 3 {
		g.start(t, i)
	}
	var mu sync.Mutex
	acked := map[registry.Key]bool{}
	var failures atomic.Int64
	hc := &http.Client{Timeout: 5 * time.Second}
	for round := range 4 {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := range 12 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					k := registry.Key{User: fmt.Sprintf("r%d-w%d-%d@example.com", round, w, i), AccountID: acc,
						DeviceToken: token(round*1_000_000 + w*10_000 + i)}
					resp, err := hc.Post("http://"+g.addr[w%3]+"/register", "application/json",
						strings.NewReader(registerBody(k.User, k.AccountID, k.DeviceToken)))
					if err != nil {
						failures.Add(1)
						time.Sleep(10 * time.Millisecond) // that daemon is being restarted
						continue
					}
					resp.Body.Close()
					if resp.StatusCode == 200 {
						mu.Lock()
						acked[k] = true
						mu.Unlock()
					}
				}
			}()
		}
		time.Sleep(time.Duration(200+rand.IntN(300)) * time.Millisecond)
		victim := round % 3
		failed := failures.Load()
		g.d[victim].kill()
		// The clients run into the dead daemon before the round ends.
		testutil.WaitFor(t, "a registration to fail at the killed daemon", func() bool { return failures.Load() > failed })
		close(stop)
		wg.Wait()
		g.start(t, victim)
	}
	lost := g.missingInDB(t, acked)
	t.Logf("%d registrations acknowledged across 3 daemons and 4 SIGKILLs, %d lost", len(acked), lost)
	if len(acked) < 100 {
		t.Fatalf("only %d acknowledged: the test did not exercise the daemons", len(acked))
	}
	if lost > 0 {
		t.Fatalf("%d acknowledged registrations lost", lost)
	}
	// And every daemon knows every one of them (a sample of 200 each: a
	// /notify per registration and daemon pushes too).
	for i, addr := range g.addr {
		checked := 0
		for k := range acked {
			if checked++; checked > 200 {
				break
			}
			if status, _ := post(t, addr, "/notify", notifyBody(k.User, "INBOX", "MessageNew")); status != 200 {
				t.Errorf("daemon %d does not know %s (/notify %d)", i, k.User, status)
				break
			}
		}
	}
}

// TestE2EPostgresRegistry is the whole chain with the registry in
// PostgreSQL: iOS registers through real Dovecot, the row lands in the
// database, a multi-recipient LMTP delivery pushes to each recipient, and
// after kill -9 and the state folder's removal a new xapsd still knows
// every device from the database alone.
func TestE2EPostgresRegistry(t *testing.T) { forEachDovecot(t, testE2EPostgresRegistry) }

func testE2EPostgresRegistry(t *testing.T, dv dovecotKind) {
	pg := startPG(t)
	e := newE2E(t, dv, "databaseURL: "+pg.URL+"\n")
	// Both the "registry loaded" and the "xapsd is running" lines name
	// the database, not the unused registry file.
	if !e.d.waitLog("xapsd is running", 5*time.Second) ||
		strings.Count(e.d.log.String(), `registry="PostgreSQL 127.0.0.1:`) != 2 || strings.Contains(e.d.log.String(), "database.json") {
		t.Errorf("xapsd does not say it uses PostgreSQL:\n%s", e.d.log.String())
	}
	tokens := map[string]string{"alice": token(1), "carol": token(2)}
	for _, u := range []string{"alice", "carol"} {
		if lines, ok := imapLogin(t, e.dc.imap, u).registerLikeIOS("ACC-"+u, tokens[u], "INBOX"); !ok {
			t.Fatalf("registration of %s failed: %v", u, lines)
		}
	}
	rows, err := pg.SQL(`SELECT username || ' ' || device_token || ' ' || array_to_string(mailboxes, ',') FROM xapsd_registrations ORDER BY username`)
	if err != nil {
		t.Fatalf("%v: %s", err, rows)
	}
	if want := "alice " + token(1) + " INBOX\ncarol " + token(2) + " INBOX"; rows != want {
		t.Fatalf("rows in PostgreSQL:\n%s\nwant:\n%s", rows, want)
	}

	deliverBoth := func(subject string) {
		t.Helper()
		before := e.apns.Count()
		if codes := lmtpTransaction(t, e.dc.lmtp, subject, "alice@example.org", "carol@example.org"); codes[0] != 250 || codes[1] != 250 {
			t.Fatalf("LMTP replies %v", codes)
		}
		reqs, err := e.apns.WaitRequests(int(before)+2, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		got := perToken(reqs[before:])
		if got[token(1)] != 1 || got[token(2)] != 1 {
			t.Errorf("%s: pushes per token %v, want one each", subject, got)
		}
	}
	deliverBoth("before the crash")

	// The machine's disk is gone: only the database remembers.
	e.d.kill()
	if err := os.RemoveAll(filepath.Join(e.dir, "state")); err != nil {
		t.Fatal(err)
	}
	e.d = startDaemon(t, e.dir, e.addr, e.caEnv)
	deliverBoth("after kill -9 and a lost state folder")
}

// TestPostgresFromFilesAndBack follows docs/operations.md's way from the
// file registry to PostgreSQL and back with the real commands: export from
// a daemon on files, import into one on PostgreSQL (with its state folder
// gone, so the database is the only source), export again, and start on
// the files with that export. Every user is pushed to at each stage.
func TestPostgresFromFilesAndBack(t *testing.T) {
	pg := startPG(t)
	e := newAPNsEnv(t, "apnsMinInterval: 0\n")
	base := fmt.Sprintf("apnsEndpoint: %s\ncertificateFilePem: push.pem\ncertificateFilePemKey: push.key\napnsMinInterval: 0\n", e.apns.URL)
	users := []string{"alice@example.com", "bob@example.com", "carol@example.com"}
	for i, u := range users {
		e.register(t, u, fmt.Sprintf("ACC-%d", i), token(i+1), "INBOX")
	}
	cfg := filepath.Join(e.dir, "xapsd.yaml")
	allPushed := func(stage string) {
		t.Helper()
		for i, u := range users {
			before := e.apns.Count()
			if status, body := post(t, e.addr, "/notify", notifyBody(u, "INBOX", "MessageNew")); status != 200 {
				t.Fatalf("%s: /notify %s = %d %q", stage, u, status, body)
			}
			reqs, err := e.apns.WaitRequests(int(before)+1, 5*time.Second)
			if err != nil || reqs[before].Token != token(i+1) {
				t.Fatalf("%s: no push to %s's device: %v", stage, u, err)
			}
		}
	}
	allPushed("files")

	fromFiles := filepath.Join(testutil.TempDir(t), "from-files.json")
	if code, _, stderr := run(t, "", "--config", cfg, "export", fromFiles); code != 0 {
		t.Fatalf("export from the files: exit %d: %s", code, stderr)
	}
	e.d.stop()
	if err := os.RemoveAll(filepath.Join(e.dir, "state")); err != nil {
		t.Fatal(err)
	}
	e.addr = writeConfig(t, e.dir, base+"databaseURL: "+pg.URL+"\n")
	e.d = startDaemon(t, e.dir, e.addr, e.caEnv)
	if code, out, stderr := run(t, "", "--config", cfg, "import", fromFiles); code != 0 {
		t.Fatalf("import into PostgreSQL: exit %d: %s%s", code, out, stderr)
	}
	if n, err := pg.SQL(`SELECT count(*) FROM xapsd_registrations`); err != nil || n != "3" {
		t.Fatalf("rows in PostgreSQL after the import: %q %v", n, err)
	}
	allPushed("PostgreSQL")

	fromPG := filepath.Join(testutil.TempDir(t), "from-postgres.json")
	if code, _, stderr := run(t, "", "--config", cfg, "export", fromPG); code != 0 {
		t.Fatalf("export from PostgreSQL: exit %d: %s", code, stderr)
	}
	if fi, err := os.Stat(fromPG); err != nil {
		t.Fatal(err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Errorf("export file mode %v, want 0600", fi.Mode().Perm())
	}
	e.d.stop()
	data, err := os.ReadFile(fromPG)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(e.dir, "state"), 0o700)
	if err := os.WriteFile(filepath.Join(e.dir, "state", "database.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	e.addr = writeConfig(t, e.dir, base)
	e.d = startDaemon(t, e.dir, e.addr, e.caEnv)
	if !e.d.waitLog("registrations=3", 5*time.Second) {
		t.Errorf("the files registry did not load the 3 exported registrations:\n%s", e.d.log.String())
	}
	allPushed("files again")
}
