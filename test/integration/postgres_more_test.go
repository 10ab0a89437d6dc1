package integration

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/pgstore"
	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/pgtest"
)

// More of issue 15 with several xapsd on one PostgreSQL: which daemon
// pushes, held-back pushes, the admin commands against any daemon, an old
// database.json imported, and daemons migrating an empty database at once.
// Most give every daemon its own APNs stand-in, so that a push shows
// which daemon sent it.

var daemonName = []string{"A", "B", "C"}

// acc2 is a second account id: another device of the same user.
const acc2 = "2C1E4F4A-8D0B-4C61-9E8A-0D7D2B9B6A11"

// waitKnown waits until daemon i has user in memory, without causing a
// push: a /notify for a mailbox no device registered is 204 for a known
// user and 404 for an unknown one.
func (g *pgGroup) waitKnown(t *testing.T, i int, user string) {
	t.Helper()
	status := 0
	testutil.Wait(5*time.Second, func() bool {
		status, _ = post(t, g.addr[i], "/notify", notifyBody(user, "xapsd-test-probe", "MessageNew"))
		return status != 404
	})
	if status != 204 {
		t.Fatalf("%s does not know %s (/notify %d)", daemonName[i], user, status)
	}
}

// waitDevices runs `xapsd devices list USER` against daemon i until it
// lists exactly the device tokens want, and returns its output. Unlike
// waitKnown it tells that every device of a user has arrived.
func (g *pgGroup) waitDevices(t *testing.T, i int, user string, want ...string) string {
	t.Helper()
	want = slices.Sorted(slices.Values(want))
	var out, stderr string
	var have []string
	listed := testutil.Wait(5*time.Second, func() bool {
		var code int
		code, out, stderr = run(t, "", "--config", filepath.Join(g.dirs[i], "xapsd.yaml"), "devices", "list", user)
		if code != 0 {
			t.Fatalf("devices list on %s: exit %d: %s", daemonName[i], code, stderr)
		}
		have = nil
		for _, l := range strings.Split(out, "\n") {
			// USER  ACCOUNT-ID  DEVICE-TOKEN  REGISTERED  MAILBOXES, after a header line.
			if f := strings.Fields(l); len(f) >= 3 && f[0] == user {
				have = append(have, f[2])
			}
		}
		slices.Sort(have)
		return slices.Equal(have, want)
	})
	if !listed {
		t.Fatalf("devices list %s on %s shows %v, want %v:\n%s%s", user, daemonName[i], have, want, out, stderr)
	}
	return out
}

// markers are the device tokens of the marker user after n+1 markers.
func markers(n int) []string {
	var toks []string
	for k := 0; k <= n; k++ {
		toks = append(toks, token(100+k))
	}
	return toks
}

// counts is how many pushes each daemon's stand-in has received.
func (g *pgGroup) counts() []int64 {
	n := make([]int64, len(g.push))
	for i, s := range g.push {
		n[i] = s.Count()
	}
	return n
}

// tokensSince counts the pushes per device token at stand-in i after its
// first `after` requests.
func (g *pgGroup) tokensSince(i int, after int64) map[string]int {
	return perToken(g.push[i].Requests()[after:])
}

// A mailbox event reaches one xapsd and is pushed by that one only: the
// devices of a user registered on A and on C get one push each from
// whichever daemon the /notify reached, and none from the other two.
func TestPostgresEventIsPushedOnlyByTheDaemonItReached(t *testing.T) {
	g := newPGGroupWith(t, 3, pgGroupOptions{apnsEach: true})
	g.startAll(t)
	if status, body := post(t, g.addr[0], "/register", registerBody("alice@example.com", acc, token(1))); status != 200 {
		t.Fatalf("register the phone on A: %d %q", status, body)
	}
	if status, body := post(t, g.addr[2], "/register", registerBody("alice@example.com", acc2, token(2))); status != 200 {
		t.Fatalf("register the tablet on C: %d %q", status, body)
	}
	for i := range 3 {
		g.waitDevices(t, i, "alice@example.com", token(1), token(2))
	}
	for n, i := range []int{1, 2, 0} { // B, then C, then A
		before := g.counts()
		if status, _ := post(t, g.addr[i], "/notify", notifyBody("alice@example.com", "INBOX", "MessageNew")); status != 200 {
			t.Fatalf("/notify on %s: %d", daemonName[i], status)
		}
		if _, err := g.push[i].WaitRequests(int(before[i])+2, 5*time.Second); err != nil {
			t.Fatalf("%s's pushes for the event it got: %v", daemonName[i], err)
		}
		// Another daemon could only have learnt of the event through
		// the database: a device registered on the daemon after the
		// event reaches the others behind anything it sent before.
		marker := token(100 + n)
		if status, body := post(t, g.addr[i], "/register", registerBody("marker@example.com", fmt.Sprintf("MARKER-%d", n), marker)); status != 200 {
			t.Fatalf("register the marker on %s: %d %q", daemonName[i], status, body)
		}
		for j := range 3 {
			g.waitDevices(t, j, "marker@example.com", markers(n)...)
		}
		after := g.counts()
		for j := range 3 {
			want := int64(0)
			if j == i {
				want = 2
			}
			if got := after[j] - before[j]; got != want {
				t.Errorf("event sent to %s: %s pushed %d times, want %d", daemonName[i], daemonName[j], got, want)
			}
		}
		if got := g.tokensSince(i, before[i]); got[token(1)] != 1 || got[token(2)] != 1 {
			t.Errorf("event sent to %s: pushes per device %v, want one to each of alice's two", daemonName[i], got)
		}
	}
}

// Held-back pushes stay with the daemon that holds them: flag changes
// reported to B and, a second later, to C are each pushed once, by that
// daemon, no sooner than `delay` after its own event; A, which had no
// event, pushes nothing.
func TestPostgresHeldBackPushesStayWithTheirDaemon(t *testing.T) {
	const delay = 2 * time.Second
	g := newPGGroupWith(t, 3, pgGroupOptions{apnsEach: true, extra: "delay: 2\ncheckInterval: 200ms\n"})
	g.startAll(t)
	if status, body := post(t, g.addr[0], "/register", registerBody("alice@example.com", acc, token(1))); status != 200 {
		t.Fatalf("register on A: %d %q", status, body)
	}
	if status, body := post(t, g.addr[0], "/register", registerBody("marker@example.com", acc, token(9))); status != 200 {
		t.Fatalf("register the marker on A: %d %q", status, body)
	}
	for i := range 3 {
		g.waitKnown(t, i, "alice@example.com")
		g.waitKnown(t, i, "marker@example.com")
	}

	sentB := time.Now()
	if status, _ := post(t, g.addr[1], "/notify", notifyBody("alice@example.com", "INBOX", "FlagsSet", "MessageRead")); status != 200 {
		t.Fatalf("/notify on B: %d", status)
	}
	time.Sleep(time.Second)
	sentC := time.Now()
	if status, _ := post(t, g.addr[2], "/notify", notifyBody("alice@example.com", "INBOX", "FlagsSet")); status != 200 {
		t.Fatalf("/notify on C: %d", status)
	}
	for i, sent := range map[int]time.Time{1: sentB, 2: sentC} {
		reqs, err := g.push[i].WaitRequests(1, delay+5*time.Second)
		if err != nil {
			t.Fatalf("%s never sent the push it held back: %v", daemonName[i], err)
		}
		if waited := reqs[0].Received.Sub(sent); waited < delay {
			t.Errorf("%s pushed %v after its flag change, before the %v delay", daemonName[i], waited, delay)
		}
	}
	// A second push from anyone would be due before a flag change made
	// now: each daemon's push for one is the later event.
	for i := range 3 {
		if status, _ := post(t, g.addr[i], "/notify", notifyBody("marker@example.com", "INBOX", "FlagsSet")); status != 200 {
			t.Fatalf("/notify for the marker on %s: %d", daemonName[i], status)
		}
	}
	for i := range 3 {
		testutil.WaitWithin(t, delay+5*time.Second, daemonName[i]+"'s push for the marker", func() bool {
			return perToken(g.push[i].Requests())[token(9)] == 1
		})
	}
	got := make([]int64, 3)
	for i := range 3 {
		got[i] = int64(perToken(g.push[i].Requests())[token(1)])
	}
	if want := []int64{0, 1, 1}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("pushes from A, B, C: %v, want %v", got, want)
	}
}

// The admin commands work against any daemon of the group: a device
// registered through B is listed by A, test-pushed by C (through C's own
// connection to Apple) and removed through C, after which A and B answer
// /notify for the user with 404.
func TestPostgresAdminCommandsWorkAgainstAnyDaemon(t *testing.T) {
	g := newPGGroupWith(t, 3, pgGroupOptions{apnsEach: true})
	g.startAll(t)
	cfg := func(i int) string { return filepath.Join(g.dirs[i], "xapsd.yaml") }
	const user = "alice@example.com"
	for _, dev := range []struct{ acc, tok string }{{acc, token(1)}, {acc2, token(2)}} {
		if status, body := post(t, g.addr[1], "/register", registerBody(user, dev.acc, dev.tok)); status != 200 {
			t.Fatalf("register on B: %d %q", status, body)
		}
	}
	if out := g.waitDevices(t, 0, user, token(1), token(2)); !strings.Contains(out, acc) || !strings.Contains(out, acc2) {
		t.Errorf("devices list on A:\n%s", out)
	}
	g.waitDevices(t, 2, user, token(1), token(2))

	before := g.counts()
	code, out, stderr := run(t, "", "--config", cfg(2), "test-push", user)
	if code != 0 || strings.Count(out, "delivered") != 2 {
		t.Fatalf("test-push on C: exit %d:\n%s%s", code, out, stderr)
	}
	after := g.counts()
	if got := g.tokensSince(2, before[2]); got[token(1)] != 1 || got[token(2)] != 1 || after[0] != before[0] || after[1] != before[1] {
		t.Errorf("test-push on C: C pushed %v; pushes from A, B before %v, after %v", got, before, after)
	}

	code, out, stderr = run(t, "", "--config", cfg(2), "devices", "remove", user, token(1))
	if code != 0 || !strings.Contains(out, "removed 1 registration(s)") || !strings.Contains(out, token(1)) {
		t.Fatalf("devices remove %s on C: exit %d:\n%s%s", token(1), code, out, stderr)
	}
	g.waitDevices(t, 0, user, token(2))
	if rows, err := g.pg.SQL(`SELECT device_token FROM xapsd_registrations`); err != nil || rows != token(2) {
		t.Errorf("rows after removing one device through C: %q %v", rows, err)
	}

	code, out, stderr = run(t, "", "--config", cfg(2), "devices", "remove", user)
	if code != 0 || !strings.Contains(out, "removed 1 registration(s)") || !strings.Contains(out, token(2)) {
		t.Fatalf("devices remove on C: exit %d:\n%s%s", code, out, stderr)
	}
	removed := time.Now()
	for _, i := range []int{0, 1} {
		status := 0
		if !testutil.Wait(5*time.Second-time.Since(removed), func() bool {
			status, _ = post(t, g.addr[i], "/notify", notifyBody(user, "INBOX", "MessageNew"))
			return status == 404
		}) {
			t.Fatalf("%s still knows %s 5 s after devices remove on C (/notify %d)", daemonName[i], user, status)
		}
	}
	t.Logf("the removal through C reached A and B within %v", time.Since(removed))
	if code, out, stderr := run(t, "", "--config", cfg(0), "devices", "list", user); code != 0 || strings.Contains(out, user) ||
		!strings.Contains(stderr, "no device registered") {
		t.Errorf("devices list on A after the removal: exit %d:\n%s%s", code, out, stderr)
	}
}

// An old xapsd's database.json (user names as the old daemon stored them,
// an entry without a time, an expired one, its AppleCerts) imported
// through A lands in PostgreSQL, and B pushes for the imported users.
func TestPostgresImportsAnOldDatabaseJSON(t *testing.T) {
	g := newPGGroupWith(t, 2, pgGroupOptions{apnsEach: true})
	g.startAll(t)
	// Whole seconds: PostgreSQL keeps microseconds.
	recent := time.Now().Add(-48 * time.Hour).Truncate(time.Second).In(time.FixedZone("", -5*3600))
	expired := time.Now().Add(-90 * 24 * time.Hour)
	old := `{
  "AppleCerts": {"Signature": [], "Keys": []},
  "Users": {
    "Alice@Example.COM": {
      "Accounts": {
        "` + acc + `": {"DeviceToken": "` + token(1) + `", "Mailboxes": ["INBOX", "Notes"], "RegistrationTime": "` + recent.Format(time.RFC3339Nano) + `"},
        "` + acc2 + `": {"DeviceToken": "` + token(2) + `", "Mailboxes": ["INBOX"]}
      }
    },
    "bob@example.com": {
      "Accounts": {
        "` + acc + `": {"DeviceToken": "` + token(3) + `", "Mailboxes": ["INBOX"], "RegistrationTime": "` + recent.Format(time.RFC3339Nano) + `"}
      }
    },
    "gone@example.com": {
      "Accounts": {
        "` + acc + `": {"DeviceToken": "` + token(4) + `", "Mailboxes": ["INBOX"], "RegistrationTime": "` + expired.Format(time.RFC3339Nano) + `"}
      }
    }
  }
}`
	file := filepath.Join(testutil.TempDir(t), "database.json")
	if err := os.WriteFile(file, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := run(t, "", "--config", filepath.Join(g.dirs[0], "xapsd.yaml"), "import", file)
	if code != 0 || !strings.Contains(out, "4 registration(s) in "+file+", 3 imported") {
		t.Fatalf("import through A: exit %d:\n%s%s", code, out, stderr)
	}
	rows, err := g.pg.SQL(`SELECT username || ' ' || account_id || ' ' || device_token || ' ' || array_to_string(mailboxes, ',') || ' ' ||
		(registered = '` + recent.Format(time.RFC3339) + `'::timestamptz)::text || ' ' || (registered > now() - interval '1 hour')::text
		FROM xapsd_registrations ORDER BY username, account_id`)
	if err != nil {
		t.Fatalf("%v: %s", err, rows)
	}
	want := strings.Join([]string{
		"alice@example.com " + acc + " " + token(1) + " INBOX,Notes true false",
		"alice@example.com " + acc2 + " " + token(2) + " INBOX false true", // no time: registered now
		"bob@example.com " + acc + " " + token(3) + " INBOX true false",
	}, "\n")
	if rows != want {
		t.Fatalf("rows in PostgreSQL after the import:\n%s\nwant:\n%s", rows, want)
	}

	// B, which took no part in the import, pushes for the imported users.
	g.waitDevices(t, 1, "alice@example.com", token(1), token(2))
	g.waitDevices(t, 1, "bob@example.com", token(3))
	for _, c := range []struct {
		user, mailbox string
		tokens        map[string]int
	}{
		{"Alice@example.com", "Notes", map[string]int{token(1): 1}},
		{"bob@example.com", "INBOX", map[string]int{token(3): 1}},
	} {
		before := g.push[1].Count()
		if status, _ := post(t, g.addr[1], "/notify", notifyBody(c.user, c.mailbox, "MessageNew")); status != 200 {
			t.Fatalf("/notify %s %s on B: %d", c.user, c.mailbox, status)
		}
		if _, err := g.push[1].WaitRequests(int(before)+len(c.tokens), 5*time.Second); err != nil {
			t.Fatalf("B's push for the imported %s: %v", c.user, err)
		}
		if got := g.tokensSince(1, before); fmt.Sprint(got) != fmt.Sprint(c.tokens) {
			t.Errorf("B's pushes for %s %s: %v, want %v", c.user, c.mailbox, got, c.tokens)
		}
	}
	if status, _ := post(t, g.addr[1], "/notify", notifyBody("gone@example.com", "INBOX", "MessageNew")); status != 404 {
		t.Errorf("the expired registration was imported: /notify on B %d, want 404", status)
	}
	if n := g.push[0].Count(); n != 0 {
		t.Errorf("A pushed %d times for events sent to B", n)
	}
}

// pgGate stands between daemons and PostgreSQL: daemon i connects to a
// port of its own, and every connection waits until each daemon has opened
// one (or maxWait has passed), so that their first statements, the schema
// migration, reach the server at the same moment.
type pgGate struct {
	urls     []string
	open     chan struct{}
	together bool // every daemon had arrived when the gate opened

	mu    sync.Mutex
	conns []net.Conn
}

func newPGGate(t *testing.T, pg *pgtest.Cluster, n int, maxWait time.Duration) *pgGate {
	t.Helper()
	gate := &pgGate{open: make(chan struct{})}
	var once sync.Once
	arrived := make([]bool, n)
	count := 0
	upstream := fmt.Sprintf("127.0.0.1:%d", pg.Port)
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		gate.urls = append(gate.urls, strings.Replace(pg.URL, fmt.Sprintf(":%d/", pg.Port),
			fmt.Sprintf(":%d/", ln.Addr().(*net.TCPAddr).Port), 1))
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				gate.mu.Lock()
				gate.conns = append(gate.conns, c)
				if !arrived[i] {
					arrived[i] = true
					if count++; count == n {
						gate.together = true
						once.Do(func() { close(gate.open) })
					}
				}
				gate.mu.Unlock()
				go gate.pipe(c, upstream)
			}
		}()
	}
	timer := time.AfterFunc(maxWait, func() { once.Do(func() { close(gate.open) }) })
	t.Cleanup(func() {
		timer.Stop()
		gate.mu.Lock()
		defer gate.mu.Unlock()
		for _, c := range gate.conns {
			c.Close()
		}
	})
	return gate
}

func (gate *pgGate) pipe(c net.Conn, upstream string) {
	<-gate.open
	u, err := net.Dial("tcp", upstream)
	if err != nil {
		c.Close()
		return
	}
	gate.mu.Lock()
	gate.conns = append(gate.conns, u)
	gate.mu.Unlock()
	go func() { io.Copy(u, c); u.Close() }()
	io.Copy(c, u)
	c.Close()
}

func (gate *pgGate) wasTogether() bool {
	gate.mu.Lock()
	defer gate.mu.Unlock()
	return gate.together
}

// Three xapsd processes starting at once on an empty database race to
// create the schema; the advisory lock lets one migrate while the others
// wait and find nothing left to do. All three start cleanly (no failed
// migration retried later), the schema is there once, and a registration
// on each is known to all.
func TestPostgresThreeDaemonsStartingTogetherMigrateOnce(t *testing.T) {
	pg := startPG(t)
	gate := newPGGate(t, pg, 3, 4*time.Second)
	g := newPGGroupWith(t, 3, pgGroupOptions{pg: pg, urls: gate.urls})
	g.startAll(t) // at once, and the gate holds them until all three are there
	if !gate.wasTogether() {
		t.Fatal("the three daemons did not reach the database within 4 s of each other: the test did not race their migrations")
	}
	var versions []string
	for v := 1; v <= pgstore.SchemaVersion; v++ {
		versions = append(versions, fmt.Sprint(v))
	}
	if out, err := pg.SQL(`SELECT string_agg(version::text, ',' ORDER BY version) FROM xapsd_schema`); err != nil ||
		out != strings.Join(versions, ",") {
		t.Errorf("schema versions %q (%v), want each of 1 to %d once", out, err, pgstore.SchemaVersion)
	}
	if out, err := pg.SQL(`SELECT count(*) FROM pg_tables WHERE tablename LIKE 'xapsd%'`); err != nil || out != "2" {
		t.Errorf("xapsd tables: %q (%v), want xapsd_schema and xapsd_registrations", out, err)
	}
	for i := range 3 {
		if status, body := get(t, "http://"+g.addr[i]+"/healthz"); status != 200 || body != "ok\n" {
			t.Errorf("%s /healthz: %d %q", daemonName[i], status, body)
		}
		user := fmt.Sprintf("user%d@example.com", i)
		if status, body := post(t, g.addr[i], "/register", registerBody(user, acc, token(i+1))); status != 200 || body != topicA {
			t.Errorf("register on %s: %d %q", daemonName[i], status, body)
		}
	}
	for i := range 3 {
		for j := range 3 {
			g.waitKnown(t, i, fmt.Sprintf("user%d@example.com", j))
		}
	}
	for i, d := range g.d {
		if log := d.log.String(); strings.Contains(log, "level=error") || strings.Contains(log, "level=warn") {
			t.Errorf("%s logged errors or warnings during a start together:\n%s", daemonName[i], log)
		}
	}
	if strings.Contains(pg.Log(), "ERROR:") {
		t.Errorf("PostgreSQL logged errors:\n%s", pg.Log())
	}
}
