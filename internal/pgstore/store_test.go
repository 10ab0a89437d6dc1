package pgstore

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/config"
	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/registry/registrytest"
	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/pgtest"
)

// The PostgreSQL registry against a real, throw-away PostgreSQL: several
// registries on one database stand for several daemons.

func pgCluster(t *testing.T) *pgtest.Cluster {
	t.Helper()
	return pgtest.StartT(t, pgtest.Options{})
}

// pgSetup is what a test can set: the store's options and the
// registry's.
type pgSetup struct {
	Options
	RegistrationTTL time.Duration
	Now             func() time.Time
}

func openPG(t *testing.T, c *pgtest.Cluster, name string, tweak ...func(*pgSetup)) *registry.Registry {
	t.Helper()
	reg := registrytest.Defaults()
	o := pgSetup{Options: Options{DatabaseURL: c.URL, Instance: name, DatabaseWaitLoad: 5 * time.Second, DatabaseCommitTimeout: 2 * time.Second,
		MaxDevicesPerAccount: reg.MaxDevicesPerAccount, MaxDevicesPerUser: reg.MaxDevicesPerUser,
		RegistryCheckInterval: config.RegistryCheckInterval}, RegistrationTTL: reg.RegistrationTTL}
	for _, f := range tweak {
		f(&o)
	}
	reg.RegistrationTTL, reg.Now = o.RegistrationTTL, o.Now
	r, err := registry.Open(New(o.Options), reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

var (
	pgReg   = registrytest.Reg
	removed = registrytest.Removed
)

func targets(r *registry.Registry, user string) int {
	return len(r.Lookup(user, "INBOX", false).Targets)
}

func TestPostgresDaemonsShareTheRegistry(t *testing.T) {
	c := pgCluster(t)
	a, b := openPG(t, c, "a"), openPG(t, c, "b")
	ctx := context.Background()
	if err := a.Register(ctx, pgReg("Alice", "ACC", "T1", "INBOX", "Notes")); err != nil {
		t.Fatal(err)
	}
	// Durable and in A's memory when Register returns.
	if targets(a, "alice") != 1 {
		t.Fatal("A does not find its own registration")
	}
	start := time.Now()
	testutil.WaitFor(t, "B sees A's registration", func() bool { return targets(b, "alice") == 1 })
	t.Logf("A's registration visible on B after %v", time.Since(start))
	if got := b.Lookup("alice", "Notes", false).Targets; len(got) != 1 {
		t.Errorf("B's lookup of Notes: %v", got)
	}

	// A 410 seen by B removes the device everywhere, by Apple's time.
	if !removed(b, registry.Key{User: "alice", AccountID: "ACC", DeviceToken: "T1"}, time.Now().Add(time.Second)) {
		t.Fatal("B did not remove the device")
	}
	testutil.WaitFor(t, "A forgets the device B removed", func() bool { return targets(a, "alice") == 0 })

	// A new daemon starts with everything.
	a.Register(ctx, pgReg("bob", "B", "T"))
	c2 := openPG(t, c, "c")
	if targets(c2, "bob") != 1 {
		t.Error("a daemon started later does not have the registrations")
	}
}

func TestPostgresCapsHoldAcrossDaemons(t *testing.T) {
	c := pgCluster(t)
	tweak := func(o *pgSetup) { o.MaxDevicesPerAccount = 3 }
	a, b := openPG(t, c, "a", tweak), openPG(t, c, "b", tweak)
	ctx := context.Background()
	start := time.Now()
	for i := 0; i < 6; i++ {
		r := []*registry.Registry{a, b}[i%2]
		rg := pgReg("carol", "ACC", fmt.Sprintf("T%d", i))
		// Distinct registration times, as far apart as the database's
		// microseconds can tell.
		rg.Registered = start.Add(time.Duration(i) * time.Millisecond)
		if err := r.Register(ctx, rg); err != nil {
			t.Fatal(err)
		}
	}
	newest := func(r *registry.Registry) bool {
		got := r.List("carol")
		if len(got) != 3 {
			return false
		}
		for _, g := range got {
			if g.DeviceToken < "T3" {
				return false
			}
		}
		return true
	}
	testutil.WaitFor(t, "both hold the three newest", func() bool { return newest(a) && newest(b) })
	if out, err := c.SQL("SELECT string_agg(device_token, ',' ORDER BY device_token) FROM xapsd_registrations WHERE username = 'carol'"); err != nil || out != "T3,T4,T5" {
		t.Errorf("the database holds %q (%v), want T3,T4,T5", out, err)
	}
}

func TestPostgresDownRefusesChangesButKeepsLookups(t *testing.T) {
	c := pgCluster(t)
	a := openPG(t, c, "a")
	ctx := context.Background()
	if err := a.Register(ctx, pgReg("dave", "A", "T")); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := a.Register(ctx, pgReg("dave", "A", "T2"))
	if !errors.Is(err, registry.ErrUnavailable) {
		t.Fatalf("Register with the database down: %v, want registry.ErrUnavailable", err)
	}
	t.Logf("refused after %v", time.Since(start))
	if targets(a, "dave") != 1 {
		t.Error("lookups from memory stopped with the database down")
	}
	for _, g := range a.List("dave") {
		if g.DeviceToken == "T2" {
			t.Error("a refused registration is in memory")
		}
	}
	testutil.WaitFor(t, "Health says why", func() bool { return errors.Is(a.Health().WriteErr, registry.ErrUnavailable) })
	testutil.WaitFor(t, "Health says the database is not followed", func() bool { return errors.Is(a.Health().FollowErr, registry.ErrUnavailable) })
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "registrations work again", func() bool { return a.Register(ctx, pgReg("dave", "A", "T2")) == nil })
	testutil.WaitFor(t, "Health clears", func() bool { return a.Health().WriteErr == nil })
	testutil.WaitFor(t, "the database is followed again", func() bool { return a.Health().FollowErr == nil })
	if targets(a, "dave") != 2 {
		t.Errorf("after the outage dave has %d devices, want 2", targets(a, "dave"))
	}
}

func TestPostgresStartsWithoutTheDatabaseAndLoadsLater(t *testing.T) {
	c := pgCluster(t)
	a := openPG(t, c, "a")
	a.Register(context.Background(), pgReg("erin", "A", "T"))
	c.Stop()
	b := openPG(t, c, "b", func(o *pgSetup) { o.DatabaseWaitLoad = 500 * time.Millisecond })
	if b.Health().WriteErr == nil {
		t.Error("a daemon without its database says it is fine")
	}
	c.Restart()
	testutil.WaitFor(t, "the late daemon loads the registrations", func() bool { return targets(b, "erin") == 1 })
}

func TestPostgresExpiryRunsOnOneDaemon(t *testing.T) {
	c := pgCluster(t)
	now := time.Now()
	clock := func(o *pgSetup) { o.RegistrationTTL = time.Hour; o.Now = func() time.Time { return now } }
	a, b := openPG(t, c, "a", clock), openPG(t, c, "b", clock)
	ctx := context.Background()
	old := pgReg("frank", "A", "OLD")
	old.Registered = now.Add(-2 * time.Hour)
	a.Register(ctx, old)
	a.Register(ctx, pgReg("frank", "A", "NEW"))
	testutil.WaitFor(t, "B has both", func() bool { return targets(b, "frank") == 2 })
	if n := registrytest.Expire(t, b, now); n != 1 {
		t.Fatalf("B's sweep removed %d, want 1", n)
	}
	if n := registrytest.Expire(t, a, now); n != 0 {
		t.Errorf("A's sweep after B's removed %d more", n)
	}
	testutil.WaitFor(t, "A follows B's sweep", func() bool { return targets(a, "frank") == 1 })
}

func TestPostgresImportKeepsTheNewer(t *testing.T) {
	c := pgCluster(t)
	a := openPG(t, c, "a")
	ctx := context.Background()
	a.Register(ctx, pgReg("gina", "A", "T", "INBOX", "Newer"))
	older := pgReg("gina", "A", "T", "INBOX")
	older.Registered = time.Now().Add(-time.Hour)
	if _, err := a.Import(ctx, []registry.Registration{older, pgReg("hank", "H", "T")}); err != nil {
		t.Fatal(err)
	}
	if got := a.List("gina"); len(got) != 1 || len(got[0].Mailboxes) != 2 {
		t.Errorf("import replaced a newer registration: %+v", got)
	}
	if targets(a, "hank") != 1 {
		t.Error("import did not add hank")
	}
}

// Rows an older xapsd stored for one device in both spellings of its
// token become one: the migration keeps the newer row, upper case; a
// daemon loads such rows (from a daemon not yet upgraded) as one device;
// and a removal takes the device in any spelling.
func TestPostgresTokenSpellingsAreOneDevice(t *testing.T) {
	c := pgCluster(t)
	a := openPG(t, c, "a")
	a.Close()
	// The database as an older xapsd left it: schema 1, both spellings.
	if out, err := c.SQL(`DELETE FROM xapsd_schema WHERE version > 1;
		INSERT INTO xapsd_registrations VALUES
		('ann', 'A', 'abcdef0123456789', '{INBOX}', now() - interval '1 hour'),
		('ann', 'A', 'ABCDEF0123456789', '{INBOX,Newer}', now() - interval '1 minute'),
		('bea', 'B', 'ABCDEF0123456789', '{INBOX}', now() - interval '1 hour'),
		('bea', 'B', 'abcdef0123456789', '{INBOX,Newer}', now() - interval '1 minute')`); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	b := openPG(t, c, "b")
	for _, user := range []string{"ann", "bea"} {
		got := b.List(user)
		if len(got) != 1 || got[0].DeviceToken != "ABCDEF0123456789" || len(got[0].Mailboxes) != 2 {
			t.Errorf("%s: %+v, want the newer registration once, upper case", user, got)
		}
	}
	if out, err := c.SQL(`SELECT string_agg(username || ' ' || device_token || ' ' || array_length(mailboxes, 1), ',' ORDER BY username) FROM xapsd_registrations`); err != nil ||
		out != "ann ABCDEF0123456789 2,bea ABCDEF0123456789 2" {
		t.Errorf("after the migration the table holds %q (%v)", out, err)
	}

	// A row in lower case written since (a daemon not yet upgraded).
	if out, err := c.SQL(`INSERT INTO xapsd_registrations VALUES
		('cid', 'C', 'abcdef0123456789', '{INBOX}', now() - interval '1 hour'),
		('cid', 'C', 'ABCDEF0123456789', '{INBOX,Newer}', now() - interval '1 minute')`); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	d := openPG(t, c, "d")
	if got := d.List("cid"); len(got) != 1 || got[0].DeviceToken != "ABCDEF0123456789" || len(got[0].Mailboxes) != 2 {
		t.Errorf("cid: %+v, want the newer registration once, upper case", got)
	}
	if targets(d, "cid") != 1 {
		t.Error("one event would push twice")
	}
	// Apple's 410 removes the device, both rows of it.
	if !removed(d, registry.Key{User: "cid", AccountID: "C", DeviceToken: "ABCDEF0123456789"}, time.Time{}) {
		t.Fatal("Remove did not remove cid's device")
	}
	if out, err := c.SQL(`SELECT count(*) FROM xapsd_registrations WHERE username = 'cid'`); err != nil || out != "0" {
		t.Errorf("after the removal cid has %s rows (%v), want 0", out, err)
	}
	if targets(d, "cid") != 0 {
		t.Error("the removed device is still in memory")
	}
}

func pgSQL(t *testing.T, c *pgtest.Cluster, q string) string {
	t.Helper()
	out, err := c.SQL(q)
	if err != nil {
		t.Fatalf("%s: %v %s", q, err, out)
	}
	return out
}

// After an outage in which a registration failed, readiness recovers by
// itself once the database is back, as it does for the files after a full
// disk: a load balancer that goes by /readyz sends no registration that
// would clear it.
func TestPostgresReadinessRecoversWithoutARegistration(t *testing.T) {
	c := pgCluster(t)
	a := openPG(t, c, "a", func(o *pgSetup) { o.RegistryCheckInterval = 100 * time.Millisecond })
	ctx := context.Background()
	if err := a.Register(ctx, pgReg("dave", "A", "T")); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := a.Register(ctx, pgReg("dave", "A", "T2")); !errors.Is(err, registry.ErrUnavailable) {
		t.Fatalf("Register with the database down: %v", err)
	}
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "Health clears with the database back, without a registration", func() bool { return a.Health().WriteErr == nil })
}

// A commit PostgreSQL does not confirm in time (synchronous replication
// waiting for a standby that is not there) is answered 503, but may be
// stored: here the wait is given up and the commit goes through. The
// daemon that answered then holds what the database holds, as every other
// daemon does; and its readiness, failed meanwhile, recovers once commits
// go through again.
func TestPostgresUnconfirmedCommitEndsWithMemoryAsTheDatabase(t *testing.T) {
	c := pgCluster(t)
	a := openPG(t, c, "a", func(o *pgSetup) {
		o.RegistryCheckInterval = 100 * time.Millisecond
		o.DatabaseCommitTimeout = time.Second
	})
	b := openPG(t, c, "b")
	ctx := context.Background()
	if err := a.Register(ctx, pgReg("alice", "A", "T")); err != nil {
		t.Fatal(err)
	}
	pgSQL(t, c, "ALTER SYSTEM SET synchronous_standby_names = 'absent_standby'")
	pgSQL(t, c, "SELECT pg_reload_conf()")
	err := a.Register(ctx, pgReg("zoe", "Z", "T"))
	if !errors.Is(err, registry.ErrUnavailable) || !errors.Is(err, registry.ErrUnconfirmed) {
		t.Fatalf("Register while the commit waits for an absent standby = %v, want registry.ErrUnavailable and registry.ErrUnconfirmed", err)
	}
	if a.Health().WriteErr == nil {
		t.Error("Health is fine right after an unconfirmed commit")
	}
	inDB := func() bool {
		return pgSQL(t, c, "SELECT count(*) FROM xapsd_registrations WHERE username = 'zoe'") == "1"
	}
	testutil.WaitFor(t, "the unconfirmed registration is in the database", inDB)
	testutil.WaitFor(t, "B, another daemon, has zoe", func() bool { return targets(b, "zoe") == 1 })
	testutil.WaitFor(t, "A, which answered 503, has zoe as the database does", func() bool { return targets(a, "zoe") == 1 })

	pgSQL(t, c, "ALTER SYSTEM RESET synchronous_standby_names")
	pgSQL(t, c, "SELECT pg_reload_conf()")
	testutil.WaitFor(t, "Health clears once commits go through, without a registration", func() bool { return a.Health().WriteErr == nil })
	if err := a.Register(ctx, pgReg("zoe", "Z", "T2")); err != nil {
		t.Fatal(err)
	}
	if got := len(a.List("zoe")); got != 2 {
		t.Errorf("zoe has %d devices on A, want 2", got)
	}
}
