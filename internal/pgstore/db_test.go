package pgstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/registry/registrytest"
	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/pgtest"
)

// Every test runs against a real, throw-away PostgreSQL (internal/testutil/pgtest).
func cluster(t *testing.T) *pgtest.Cluster {
	t.Helper()
	return pgtest.StartT(t, pgtest.Options{})
}

func open(t *testing.T, c *pgtest.Cluster, instance string) *db {
	t.Helper()
	s, err := openDB(context.Background(), Options{DatabaseURL: c.URL, MaxDevicesPerAccount: 3, MaxDevicesPerUser: 5, Instance: instance})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func put(user, acct, tok string, at time.Time, boxes ...string) registry.Change {
	g := registrytest.Reg(user, acct, tok, boxes...)
	g.Registered = at
	return registry.Change{Registration: g}
}

// del removes the registration of user, acct and tok if it was made
// before before (Apple's 410 rule).
func del(user, acct, tok string, before time.Time) registry.Change {
	c := registry.Change{Del: true, Before: before}
	c.Key = registry.Key{User: user, AccountID: acct, DeviceToken: tok}
	return c
}

func tokens(regs []registry.Registration) []string {
	var out []string
	for _, r := range regs {
		out = append(out, r.AccountID+"/"+r.DeviceToken)
	}
	sort.Strings(out)
	return out
}

func TestDaemonsStartingTogetherEndWithOneSchema(t *testing.T) {
	c := cluster(t)
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := openDB(context.Background(), Options{DatabaseURL: c.URL, Instance: fmt.Sprint(i)})
			if err != nil {
				errs <- err
				return
			}
			s.Close()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a daemon failed to start: %v", err)
	}
	out, err := c.SQL("SELECT string_agg(version::text, ',' ORDER BY version) FROM xapsd_schema")
	var want []string
	for v := 1; v <= SchemaVersion; v++ {
		want = append(want, fmt.Sprint(v))
	}
	if err != nil || out != strings.Join(want, ",") {
		t.Errorf("schema versions %q (%v), want each migration once: %s", out, err, strings.Join(want, ","))
	}
}

func TestANewerSchemaIsRefused(t *testing.T) {
	c := cluster(t)
	open(t, c, "a")
	if out, err := c.SQL("INSERT INTO xapsd_schema (version) VALUES (99)"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	_, err := openDB(context.Background(), Options{DatabaseURL: c.URL})
	if !errors.Is(err, ErrSchemaTooNew) || !strings.Contains(err.Error(), "schema version 99") ||
		!strings.Contains(err.Error(), "upgrade xapsd") {
		t.Fatalf("opening a database of a newer xapsd: %v", err)
	}
}

func TestCommitStoresAndReturnsTheUsersState(t *testing.T) {
	c := cluster(t)
	s := open(t, c, "a")
	ctx := context.Background()
	state, err := s.Commit(ctx, []registry.Change{put("alice", "A1", "T1", t0, "INBOX", "Notes"), put("bob", "B1", "T2", t0)})
	if err != nil {
		t.Fatal(err)
	}
	if got := tokens(state["alice"]); strings.Join(got, " ") != "A1/T1" || len(state["bob"]) != 1 {
		t.Fatalf("state %v", state)
	}
	if r := state["alice"][0]; !r.Registered.Equal(t0) || strings.Join(r.Mailboxes, ",") != "INBOX,Notes" {
		t.Errorf("alice %+v", r)
	}
	// A re-registration replaces mailboxes and time.
	if _, err := s.Commit(ctx, []registry.Change{put("alice", "A1", "T1", t0.Add(time.Hour), "INBOX")}); err != nil {
		t.Fatal(err)
	}
	var all []registry.Registration
	if err := s.LoadAll(ctx, func(r registry.Registration) { all = append(all, r) }); err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 {
		t.Fatalf("LoadAll: %v", all)
	}
	users, _ := s.LoadUsers(ctx, []string{"alice", "nobody"})
	if r := users["alice"][0]; !r.Registered.Equal(t0.Add(time.Hour)) || len(r.Mailboxes) != 1 {
		t.Errorf("after re-registration %+v", r)
	}
	if regs, ok := users["nobody"]; !ok || len(regs) != 0 {
		t.Errorf("a user without registrations must be present and empty: %v %v", regs, ok)
	}
}

func TestCapsHoldAcrossDaemons(t *testing.T) {
	c := cluster(t)
	a, b := open(t, c, "a"), open(t, c, "b")
	ctx := context.Background()
	// Per account (3): four tokens of one account from two daemons keep
	// the three newest.
	for i, s := range []*db{a, b, a, b} {
		if _, err := s.Commit(ctx, []registry.Change{put("alice", "ACC", fmt.Sprintf("T%d", i), t0.Add(time.Duration(i)*time.Minute))}); err != nil {
			t.Fatal(err)
		}
	}
	users, _ := a.LoadUsers(ctx, []string{"alice"})
	if got := strings.Join(tokens(users["alice"]), " "); got != "ACC/T1 ACC/T2 ACC/T3" {
		t.Errorf("per-account cap: %s, want the three newest", got)
	}
	// Per user (5) over several accounts, concurrently from both.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		s := []*db{a, b}[i%2]
		go func() {
			defer wg.Done()
			if _, err := s.Commit(ctx, []registry.Change{put("bob", fmt.Sprintf("ACC%d", i), "T", t0.Add(time.Duration(i)*time.Minute))}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	users, _ = b.LoadUsers(ctx, []string{"bob"})
	if got := strings.Join(tokens(users["bob"]), " "); got != "ACC3/T ACC4/T ACC5/T ACC6/T ACC7/T" {
		t.Errorf("per-user cap: %s, want the five newest", got)
	}
}

func TestDeleteHonoursAppleTimestampAcrossDaemons(t *testing.T) {
	c := cluster(t)
	a, b := open(t, c, "a"), open(t, c, "b")
	ctx := context.Background()
	a.Commit(ctx, []registry.Change{put("alice", "A", "T", t0)})
	// B registered the device again after Apple's timestamp: A's 410
	// removal with that timestamp must not take it.
	b.Commit(ctx, []registry.Change{put("alice", "A", "T", t0.Add(2*time.Hour))})
	state, err := a.Commit(ctx, []registry.Change{del("alice", "A", "T", t0.Add(time.Hour))})
	if err != nil || len(state["alice"]) != 1 {
		t.Fatalf("a registration newer than the 410 was removed: %v %v", state, err)
	}
	state, err = a.Commit(ctx, []registry.Change{del("alice", "A", "T", t0.Add(3*time.Hour))})
	if err != nil || len(state["alice"]) != 0 {
		t.Fatalf("an older registration was kept: %v %v", state, err)
	}
}

func TestImportKeepsTheNewer(t *testing.T) {
	c := cluster(t)
	s := open(t, c, "a")
	ctx := context.Background()
	s.Commit(ctx, []registry.Change{put("alice", "A", "T", t0, "INBOX", "New")})
	older := put("alice", "A", "T", t0.Add(-time.Hour), "INBOX")
	older.KeepNewer = true
	state, _ := s.Commit(ctx, []registry.Change{older})
	if got := state["alice"][0]; !got.Registered.Equal(t0) || len(got.Mailboxes) != 2 {
		t.Errorf("an older imported copy replaced the newer one: %+v", got)
	}
}

func TestFollowerHearsOtherDaemonsAndReloadsAfterAnOutage(t *testing.T) {
	c := cluster(t)
	a, b := open(t, c, "a"), open(t, c, "b")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changed := make(chan []string, 100)
	resets := make(chan struct{}, 10)
	lost := make(chan struct{}, 10)
	go b.Follow(ctx, follower{
		Changed: func(u []string) { changed <- u },
		Reset:   func(context.Context) error { resets <- struct{}{}; return nil },
		Err:     func(err error) { t.Logf("follower: %v", err) },
		Connected: func(up bool) {
			if !up {
				select {
				case lost <- struct{}{}:
				default:
				}
			}
		},
	}, nil)
	waitReset := func(what string) {
		t.Helper()
		select {
		case <-resets:
		case <-time.After(15 * time.Second):
			t.Fatalf("no reload %s", what)
		}
	}
	waitReset("at the start")
	// b's own commit is not announced to b.
	if _, err := b.Commit(context.Background(), []registry.Change{put("own", "A", "T", t0)}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := a.Commit(context.Background(), []registry.Change{put("alice", "A", "T", t0)}); err != nil {
		t.Fatal(err)
	}
	select {
	case u := <-changed:
		if len(u) != 1 || u[0] != "alice" {
			t.Errorf("changed %v, want [alice] (and never b's own change)", u)
		}
		t.Logf("a's commit reached b after %v", time.Since(start))
	case <-time.After(5 * time.Second):
		t.Fatal("b did not hear about a's change")
	}

	// An outage: the follower reconnects and reloads everything.
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost:
	case <-time.After(15 * time.Second):
		t.Fatal("the follower did not notice that the database went away")
	}
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	waitReset("after the database came back")
	if _, err := a.Commit(context.Background(), []registry.Change{put("carol", "A", "T", t0)}); err != nil {
		t.Fatalf("the first commit after the database came back: %v", err)
	}
	select {
	case u := <-changed:
		if len(u) != 1 || u[0] != "carol" {
			t.Errorf("after the outage: changed %v", u)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("after the outage b hears nothing")
	}
}

func TestOnlyOneDaemonSweepsAtATime(t *testing.T) {
	c := cluster(t)
	a := open(t, c, "a")
	ctx := context.Background()
	a.Commit(ctx, []registry.Change{put("old", "A", "T", t0), put("new", "A", "T", t0.Add(48*time.Hour))})
	// Another daemon holds the sweep.
	conn, err := pgx.Connect(ctx, c.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, lockExpire)
	if _, _, ran, err := a.Expire(ctx, t0.Add(24*time.Hour)); err != nil || ran {
		t.Fatalf("swept while another daemon held the sweep: ran=%v %v", ran, err)
	}
	conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, lockExpire)
	users, n, ran, err := a.Expire(ctx, t0.Add(24*time.Hour))
	if err != nil || !ran || n != 1 || len(users) != 1 || users[0] != "old" {
		t.Fatalf("sweep: users %v removed %d ran %v err %v", users, n, ran, err)
	}
}

func TestExclusiveRunsOnOneDaemonAtATime(t *testing.T) {
	c := cluster(t)
	a, b := open(t, c, "a"), open(t, c, "b")
	ctx := context.Background()
	inside := make(chan struct{})
	release := make(chan struct{})
	done := make(chan bool)
	go func() {
		ran, err := a.Exclusive(ctx, "apple-id", func() error { close(inside); <-release; return nil })
		done <- ran && err == nil
	}()
	<-inside
	ran, err := b.Exclusive(ctx, "apple-id", func() error { t.Error("b ran while a held the lock"); return nil })
	if ran || err != nil {
		t.Errorf("b: ran=%v err=%v while a holds the lock", ran, err)
	}
	close(release)
	if !<-done {
		t.Fatal("a did not run")
	}
	if ran, err := b.Exclusive(ctx, "apple-id", func() error { return nil }); !ran || err != nil {
		t.Errorf("b after a: ran=%v err=%v", ran, err)
	}
}

// A server that asks for a password: the URL has none, and it comes from
// databasePasswordFile or from PGPASSWORD, as libpq's tools take it.
func TestPasswordFromFileOrEnvironment(t *testing.T) {
	const password = "db-pass-4f1c"
	c := pgtest.StartT(t, pgtest.Options{Password: password})
	ctx := context.Background()
	t.Setenv("PGPASSWORD", "")
	t.Setenv("PGPASSFILE", "/nonexistent")

	if s, err := openDB(ctx, Options{DatabaseURL: c.URL}); err == nil {
		s.Close()
		t.Fatal("connected without a password: the cluster does not ask for one, so this test proves nothing")
	} else if !strings.Contains(err.Error(), "password") {
		t.Errorf("without a password: %v, want an error that says so", err)
	}

	dir := t.TempDir()
	good, bad := dir+"/good", dir+"/bad"
	os.WriteFile(good, []byte(password+"\n"), 0o600)
	os.WriteFile(bad, []byte("not-it\n"), 0o600)
	if s, err := openDB(ctx, Options{DatabaseURL: c.URL, DatabasePasswordFile: good}); err != nil {
		t.Errorf("with databasePasswordFile: %v", err)
	} else {
		s.Close()
	}
	s, err := openDB(ctx, Options{DatabaseURL: c.URL, DatabasePasswordFile: bad})
	if err == nil {
		s.Close()
		t.Error("a wrong password was accepted")
	} else if strings.Contains(err.Error(), "not-it") {
		t.Errorf("the error shows the password: %v", err)
	}
	// In this package's words; the daemon adds the setting's name
	// (daemon.TestStoreErrorsNameTheirSetting).
	if _, err := openDB(ctx, Options{DatabaseURL: c.URL, DatabasePasswordFile: dir + "/missing"}); !errors.Is(err, ErrPasswordFile) || !strings.Contains(err.Error(), dir+"/missing") {
		t.Errorf("missing password file: %v, want an error naming the password file", err)
	}

	t.Setenv("PGPASSWORD", password)
	if s, err := openDB(ctx, Options{DatabaseURL: c.URL}); err != nil {
		t.Errorf("with PGPASSWORD: %v", err)
	} else {
		s.Close()
	}
}

// syncStandbyAbsent makes every commit wait for a synchronous standby
// that is not there, as a primary whose standby went away does.
func syncStandbyAbsent(t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	for _, q := range []string{"ALTER SYSTEM SET synchronous_standby_names = 'absent_standby'", "SELECT pg_reload_conf()"} {
		if out, err := c.SQL(q); err != nil {
			t.Fatalf("%s: %v %s", q, err, out)
		}
	}
}

func syncWaiters(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	out, err := c.SQL("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
	if err != nil {
		t.Fatalf("%v %s", err, out)
	}
	return out
}

// A COMMIT that gets no answer in time (the server waits for an absent
// synchronous standby) is not a refusal: its outcome is unknown, and the
// error says so. The write check fails the same way, and no session is
// left waiting for the standby once the callers gave up (pgx cancels the
// wait, and the server then commits locally; Writable's own
// statement_timeout would end it too), so checking every few seconds does
// not pile up sessions on the server.
func TestCommitWithoutItsStandbyHasAnUnknownOutcome(t *testing.T) {
	c := cluster(t)
	s := open(t, c, "a")
	syncStandbyAbsent(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, err := s.Commit(ctx, []registry.Change{put("zoe", "Z1", "T1", t0)})
	cancel()
	if !errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("Commit while the standby is away = %v, want ErrOutcomeUnknown", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), time.Second)
	err = s.Writable(ctx)
	cancel()
	if err == nil {
		t.Fatal("Writable while commits wait for an absent standby = nil")
	}
	testutil.WaitFor(t, "no session to wait for the standby once the callers gave up", func() bool { return syncWaiters(t, c) == "0" })
	if out, err := c.SQL("ALTER SYSTEM RESET synchronous_standby_names"); err != nil {
		t.Fatal(out)
	}
	c.SQL("SELECT pg_reload_conf()")
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Writable(ctx); err != nil {
		t.Errorf("Writable with the standby requirement gone = %v", err)
	}
}

// A commit the server refuses (here: a read-only transaction default, as
// on a standby) is refused, not unknown.
func TestRefusedCommitIsNotUnknown(t *testing.T) {
	c := cluster(t)
	s := open(t, c, "a")
	for _, q := range []string{"ALTER SYSTEM SET default_transaction_read_only = on", "SELECT pg_reload_conf()"} {
		if out, err := c.SQL(q); err != nil {
			t.Fatalf("%v %s", err, out)
		}
	}
	s.pool.Reset() // new sessions see the setting
	_, err := s.Commit(context.Background(), []registry.Change{put("zoe", "Z1", "T1", t0)})
	if err == nil || errors.Is(err, ErrOutcomeUnknown) {
		t.Errorf("Commit on a read-only server = %v, want a refusal", err)
	}
	if err := s.Writable(context.Background()); err == nil {
		t.Error("Writable on a read-only server = nil")
	}
}
