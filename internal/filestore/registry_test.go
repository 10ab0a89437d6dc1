package filestore

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/config"
	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/registry/registrytest"
	"github.com/xapsd/xapsd/internal/statedir"
	"github.com/xapsd/xapsd/internal/testutil"
)

// The registrations of the tests, written once (registrytest).
const (
	acc1 = registrytest.Acc1
	acc2 = registrytest.Acc2
	tok1 = registrytest.Tok1
	tok2 = registrytest.Tok2
)

var (
	reg          = registrytest.Reg
	mustRegister = registrytest.MustRegister
	removed      = registrytest.Removed
	tokens       = registrytest.Tokens
)

type clock = testutil.Clock

func newClock() *clock { return testutil.NewClock(registrytest.Start) }

// setup is what a test can set: the registry's options and the store's,
// as the daemon sets them unless the test changes them (defaults).
type setup struct {
	Path                      string
	Now                       func() time.Time
	Log                       logrus.FieldLogger
	RegistrationTTL           time.Duration
	MaxDevicesPerAccount      int
	MaxDevicesPerUser         int
	MaxRegistrations          int
	RegistrationRefresh       time.Duration
	OnSync                    func(int, time.Duration)
	RegistryCompactAfter      int
	RegistryCompactAfterBytes int64
	RegistryCheckInterval     time.Duration
}

// defaults is the setup of the daemon (config's defaults) for the files
// at path, changed by mods.
func defaults(path string, mods ...func(*setup)) setup {
	reg := registrytest.Defaults()
	c := config.Default()
	s := setup{Path: path, RegistrationTTL: reg.RegistrationTTL, MaxDevicesPerAccount: reg.MaxDevicesPerAccount,
		MaxDevicesPerUser: reg.MaxDevicesPerUser, MaxRegistrations: reg.MaxRegistrations,
		RegistrationRefresh: reg.RegistrationRefresh, RegistryCompactAfter: c.RegistryCompactAfter,
		RegistryCompactAfterBytes: config.RegistryCompactAfterBytes, RegistryCheckInterval: config.RegistryCheckInterval}
	for _, m := range mods {
		m(&s)
	}
	return s
}

// stores finds the store of a registry a test opened, for tests that look
// inside it (jr).
var stores sync.Map

// openWith opens a registry on the files at s.Path.
func openWith(s setup) (*registry.Registry, error) {
	st := New(Options{Dir: statedir.New(s.Path), RegistryCompactAfter: s.RegistryCompactAfter,
		RegistryCompactAfterBytes: s.RegistryCompactAfterBytes, RegistryCheckInterval: s.RegistryCheckInterval,
		Log: s.Log, Now: s.Now})
	r, err := registry.Open(st, registry.Options{RegistrationTTL: s.RegistrationTTL, MaxDevicesPerAccount: s.MaxDevicesPerAccount,
		MaxDevicesPerUser: s.MaxDevicesPerUser, MaxRegistrations: s.MaxRegistrations, RegistrationRefresh: s.RegistrationRefresh,
		OnSync: s.OnSync, Log: s.Log, Now: s.Now})
	if err == nil {
		stores.Store(r, st)
	}
	return r, err
}

func open(t *testing.T, path string, c *clock, mod ...func(*setup)) *registry.Registry {
	t.Helper()
	r, err := openWith(defaults(path, append([]func(*setup){func(s *setup) { s.Now = c.Now }}, mod...)...))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return r
}

// jr is the store of r, for tests that look inside it.
func jr(r *registry.Registry) *Store {
	st, _ := stores.Load(r)
	return st.(*Store)
}

// crash abandons a registry without Close, as kill -9 would: only what
// Register acknowledged may be relied on. The files are closed as the
// kernel closes them, without a last snapshot; the registry is left
// behind, never used again.
func crash(r *registry.Registry) {
	j := jr(r)
	close(j.stopc)
	<-j.donec
	j.compactW.Wait()
	j.wmu.Lock()
	defer j.wmu.Unlock()
	if j.seg != nil {
		j.seg.Close()
	}
	closeSegments(j.segments)
	j.lock.Close()
}

func TestRegisterIsDurableWithoutClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	r := open(t, path, c)
	mustRegister(t, r, reg("Alice@Example.com", acc1, tok1, "INBOX", "Notes"))
	crash(r)

	r = open(t, path, c)
	defer r.Close()
	res := r.Lookup("alice@example.COM", "Notes", false)
	if !res.KnownUser || !slices.Equal(tokens(res), []string{tok1}) {
		t.Fatalf("after crash: %+v", res)
	}
	if got := r.List("alice@example.com"); len(got) != 1 || !got[0].Registered.Equal(c.Now()) {
		t.Errorf("List = %+v", got)
	}
	for _, p := range []string{path} {
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v; want 0600", p, st.Mode().Perm(), err)
		}
	}
	segs, _ := filepath.Glob(path + ".journal.*")
	for _, s := range segs {
		// A compaction running meanwhile may delete a segment.
		if st, err := os.Stat(s); err == nil && st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v", s, st.Mode().Perm())
		}
	}
}

func TestLookupFindsMailboxesCaseBlindForInboxOnlyAndInModifiedUTF7(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	r := open(t, path, newClock())
	defer r.Close()
	mustRegister(t, r, reg("alice", acc1, tok1, "INBOX", "Open Orders", "&AMQ-rger"))
	// The same account id restored onto a second phone.
	mustRegister(t, r, reg("alice", acc1, tok2, "inbox"))

	cases := []struct {
		mailbox   string
		inboxOnly bool
		want      []string
	}{
		{"INBOX", false, []string{tok1, tok2}},
		{"inbox", false, []string{tok1, tok2}},
		{"INBOX", true, []string{tok1, tok2}},
		{"Open Orders", false, []string{tok1}},
		{"Open Orders", true, nil},
		{"Ärger", false, []string{tok1}},
		{"Trash", false, nil},
	}
	for _, c := range cases {
		res := r.Lookup("ALICE", c.mailbox, c.inboxOnly)
		if !res.KnownUser || !slices.Equal(tokens(res), c.want) {
			t.Errorf("Lookup(%q, inboxOnly=%v) = %v known=%v, want %v", c.mailbox, c.inboxOnly, tokens(res), res.KnownUser, c.want)
		}
	}
	if res := r.Lookup("bob", "INBOX", false); res.KnownUser || len(res.Targets) != 0 {
		t.Errorf("unknown user: %+v", res)
	}
}

func TestReRegisterReplacesMailboxesAndRefreshes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	r := open(t, path, c)
	mustRegister(t, r, reg("alice", acc1, tok1, "INBOX", "Notes"))
	c.Add(2 * time.Hour)
	mustRegister(t, r, reg("alice", acc1, tok1, "INBOX"))
	crash(r)
	r = open(t, path, c)
	defer r.Close()
	got := r.List("alice")
	if len(got) != 1 || !slices.Equal(got[0].Mailboxes, []string{"INBOX"}) || !got[0].Registered.Equal(c.Now()) {
		t.Fatalf("List = %+v", got)
	}
}

func TestIdenticalReRegistrationSkipsTheDisk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	r := open(t, path, c)
	defer r.Close()
	mustRegister(t, r, reg("alice", acc1, tok1))
	seq := jr(r).seq
	c.Add(time.Minute)
	mustRegister(t, r, reg("alice", acc1, tok1))
	if jr(r).seq != seq {
		t.Errorf("identical re-registration wrote a record (seq %d -> %d)", seq, jr(r).seq)
	}
	c.Add(2 * time.Hour)
	mustRegister(t, r, reg("alice", acc1, tok1))
	if jr(r).seq == seq {
		t.Errorf("re-registration after RefreshAfter did not refresh the time")
	}
}

func TestDeviceCapsDropTheOldestOfAnAccountAndOfAUser(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	r := open(t, path, c, func(o *setup) { o.MaxDevicesPerAccount = 3; o.MaxDevicesPerUser = 5 })
	for i := range 4 {
		c.Add(time.Second)
		mustRegister(t, r, reg("alice", acc1, fmt.Sprintf("%064x", i)))
	}
	// The oldest token of the account went.
	if got := tokens(r.Lookup("alice", "INBOX", false)); !slices.Equal(got, []string{fmt.Sprintf("%064x", 1), fmt.Sprintf("%064x", 2), fmt.Sprintf("%064x", 3)}) {
		t.Fatalf("per-account cap: %v", got)
	}
	for i := range 3 {
		c.Add(time.Second)
		mustRegister(t, r, reg("alice", fmt.Sprintf("ACC-%d", i), tok2))
	}
	if _, n := r.Stats(); n != 5 {
		t.Fatalf("per-user cap: %d registrations, want 5", n)
	}
	crash(r)
	r = open(t, path, c, func(o *setup) { o.MaxDevicesPerAccount = 3; o.MaxDevicesPerUser = 5 })
	defer r.Close()
	if _, n := r.Stats(); n != 5 {
		t.Fatalf("after reopen: %d registrations, want 5", n)
	}
	if got := r.Lookup("alice", "INBOX", false); slices.Contains(tokens(got), fmt.Sprintf("%064x", 1)) {
		t.Errorf("the oldest registration of the user survived: %v", tokens(got))
	}
}

func TestRemoveHonoursTimestamp(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	r := open(t, path, c)
	mustRegister(t, r, reg("alice", acc1, tok1))
	mustRegister(t, r, reg("alice", acc1, tok2))
	registered := c.Now()
	// APNs says the token died before the device registered again: keep.
	if removed(r, registry.Key{User: "alice", AccountID: acc1, DeviceToken: tok1}, registered.Add(-time.Second)) {
		t.Fatal("removed a registration made after the 410 timestamp")
	}
	if !removed(r, registry.Key{User: "ALICE", AccountID: acc1, DeviceToken: tok1}, registered.Add(time.Second)) {
		t.Fatal("did not remove a registration made before the 410 timestamp")
	}
	// Only that token: the other phone with the same account id stays.
	if got := tokens(r.Lookup("alice", "INBOX", false)); !slices.Equal(got, []string{tok2}) {
		t.Fatalf("after remove: %v", got)
	}
	if !removed(r, registry.Key{User: "alice", AccountID: acc1, DeviceToken: tok2}, time.Time{}) {
		t.Fatal("unconditional remove failed")
	}
	if r.Lookup("alice", "INBOX", false).KnownUser {
		t.Error("user without registrations is still known")
	}
	mustRegister(t, r, reg("bob", acc2, tok1)) // waits for the journal, so the removals are written too
	crash(r)
	r = open(t, path, c)
	defer r.Close()
	if u, n := r.Stats(); u != 1 || n != 1 {
		t.Errorf("after reopen: %d users, %d registrations; want 1, 1", u, n)
	}
}

// A device that registers again after Apple's 410 timestamp keeps its
// registration, also when the re-registration was identical and skipped
// the disk: before, the stored time (up to RefreshAfter older) decided.
func TestIdenticalReRegistrationCountsForRemove(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	r := open(t, path, c)
	mustRegister(t, r, reg("alice", acc1, tok1))
	mustRegister(t, r, reg("alice", acc1, tok2))
	died := c.Now().Add(10 * time.Minute)
	c.Add(20 * time.Minute)
	seq := jr(r).seq
	mustRegister(t, r, reg("alice", acc1, tok1)) // after the token "died"
	if jr(r).seq != seq {
		t.Fatalf("identical re-registration wrote a record: the test no longer covers the shortcut")
	}
	if removed(r, registry.Key{User: "alice", AccountID: acc1, DeviceToken: tok1}, died) {
		t.Error("removed a device that registered again after the 410 timestamp")
	}
	if !removed(r, registry.Key{User: "alice", AccountID: acc1, DeviceToken: tok2}, died) {
		t.Error("kept a device that did not register again")
	}
	// The shortcut still writes nothing, and a later 410 still removes.
	if jr(r).seq != seq+1 {
		t.Errorf("seq %d -> %d: only the removal should have been written", seq, jr(r).seq)
	}
	if !removed(r, registry.Key{User: "alice", AccountID: acc1, DeviceToken: tok1}, c.Now().Add(time.Second)) {
		t.Error("a 410 after the re-registration did not remove it")
	}
	r.Close()
}

func TestRemoveMatchingRemovesOneTokenInAnySpellingOrEveryDevice(t *testing.T) {
	r := open(t, filepath.Join(t.TempDir(), "database.json"), newClock())
	defer r.Close()
	mustRegister(t, r, reg("alice", acc1, tok1))
	mustRegister(t, r, reg("alice", acc2, tok2))
	got, err := r.RemoveMatching(context.Background(), "alice", strings.ToLower(tok2))
	if err != nil || len(got) != 1 || got[0].AccountID != acc2 {
		t.Fatalf("RemoveMatching(token) = %+v, %v", got, err)
	}
	got, err = r.RemoveMatching(context.Background(), "alice", "")
	if err != nil || len(got) != 1 || got[0].DeviceToken != tok1 {
		t.Fatalf("RemoveMatching(all) = %+v, %v", got, err)
	}
}

func TestExpiryRemovesRegistrationsPastTheTTLAlsoAtStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	ttl := func(o *setup) { o.RegistrationTTL = 48 * time.Hour }
	r := open(t, path, c, ttl)
	mustRegister(t, r, reg("old", acc1, tok1))
	c.Add(24 * time.Hour)
	mustRegister(t, r, reg("new", acc2, tok2))
	c.Add(25 * time.Hour)
	if n := registrytest.Expire(t, r, c.Now()); n != 1 {
		t.Fatalf("Expire removed %d, want 1", n)
	}
	if r.Lookup("old", "INBOX", false).KnownUser || !r.Lookup("new", "INBOX", false).KnownUser {
		t.Fatal("wrong registration expired")
	}
	r.Close()
	// Expiry also runs at start.
	c.Add(24 * time.Hour)
	r = open(t, path, c, ttl)
	defer r.Close()
	if u, _ := r.Stats(); u != 0 {
		t.Errorf("expired registration survived the start: %d users", u)
	}
}

func TestLegacyDatabaseIsMigratedWithBackup(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "database.json")
	legacy := `{
  "AppleCerts": {"Signature": [], "Keys": []},
  "Users": {
    "Alice@example.com": {
      "Accounts": {
        "` + acc1 + `": {
          "DeviceToken": "` + tok1 + `",
          "Mailboxes": ["INBOX", "Notes"],
          "RegistrationTime": "2026-10-29T14:36:40.413465243-05:00"
        },
        "` + acc2 + `": {
          "DeviceToken": "` + tok2 + `",
          "Mailboxes": ["INBOX"]
        }
      }
    }
  }
}`
	if err := os.WriteFile(path, []byte(legacy), 0o644); err != nil {
		t.Fatal(err)
	}
	c := newClock()
	r := open(t, path, c)
	if got := tokens(r.Lookup("alice@example.com", "INBOX", false)); !slices.Equal(got, []string{tok1, tok2}) {
		t.Fatalf("migrated lookup = %v", got)
	}
	if got := string(jr(r).LegacyAppleCerts()); got != `{"Signature": [], "Keys": []}` {
		t.Errorf("LegacyAppleCerts = %s", got)
	}
	backups, _ := filepath.Glob(path + ".legacy-*.bak")
	if len(backups) != 1 {
		t.Fatalf("backups = %v", backups)
	}
	if b, _ := os.ReadFile(backups[0]); string(b) != legacy {
		t.Error("backup differs from the original file")
	}
	data, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(data), `{"Version":2,`) {
		t.Errorf("database not rewritten in the new layout: %.60s", data)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	// The entry without a time counts from the migration.
	for _, g := range r.List("alice@example.com") {
		if g.AccountID == acc2 && !g.Registered.Equal(c.Now()) {
			t.Errorf("time-less entry got %v, want migration time", g.Registered)
		}
	}
	r.Close()
	r = open(t, path, c)
	defer r.Close()
	if _, n := r.Stats(); n != 2 {
		t.Errorf("after reopen: %d registrations", n)
	}
	if backups, _ := filepath.Glob(path + ".legacy-*.bak"); len(backups) != 1 {
		t.Errorf("second start made another backup: %v", backups)
	}
}

func TestTornJournalTailIsIgnored(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	r := open(t, path, c)
	mustRegister(t, r, reg("alice", acc1, tok1))
	seg := jr(r).segPath
	crash(r)
	f, err := os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"Seq":99,"Op":"put","User":"bob","AccountId":"x","Devi`)
	f.Close()
	r = open(t, path, c)
	defer r.Close()
	if u, n := r.Stats(); u != 1 || n != 1 {
		t.Fatalf("after torn tail: %d users %d registrations", u, n)
	}
	mustRegister(t, r, reg("carol", acc2, tok2))
}

func TestCorruptMiddleLineIsSkipped(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	r := open(t, path, c)
	mustRegister(t, r, reg("alice", acc1, tok1))
	seg := jr(r).segPath
	crash(r)
	data, _ := os.ReadFile(seg)
	data = append([]byte("garbage\n"), data...)
	os.WriteFile(seg, data, 0o600)
	r = open(t, path, c)
	defer r.Close()
	if _, n := r.Stats(); n != 1 {
		t.Fatalf("good record after a corrupt line lost: %d registrations", n)
	}
}

func TestCompactionKeepsStateAndBoundsSegments(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	small := func(o *setup) { o.RegistryCompactAfter = 10 }
	r := open(t, path, c, small)
	for i := range 200 {
		mustRegister(t, r, reg(fmt.Sprintf("user%d", i%50), fmt.Sprintf("ACC-%d", i), tok1))
		if i%3 == 0 {
			removed(r, registry.Key{User: fmt.Sprintf("user%d", i%50), AccountID: fmt.Sprintf("ACC-%d", i), DeviceToken: tok1}, time.Time{})
		}
	}
	jr(r).compactW.Wait()
	want := r.List("")
	crash(r)
	segs, _ := filepath.Glob(path + ".journal.*")
	if len(segs) > 3 {
		t.Errorf("%d journal segments left after compactions", len(segs))
	}
	r = open(t, path, c, small)
	got := r.List("")
	if len(got) != len(want) || len(got) != 133 {
		t.Fatalf("after reopen %d registrations, before %d (want 133)", len(got), len(want))
	}
	for i := range got {
		if got[i].Key != want[i].Key {
			t.Fatalf("registration %d: %+v != %+v", i, got[i].Key, want[i].Key)
		}
	}
	r.Close()
	if segs, _ := filepath.Glob(path + ".journal.*"); len(segs) != 0 {
		t.Errorf("Close left segments %v", segs)
	}
}

func TestConcurrentRegistrationsAreAllDurable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	var syncs, synced atomic.Int64
	r := open(t, path, c, func(o *setup) {
		o.RegistryCompactAfter = 100
		o.OnSync = func(n int, _ time.Duration) { syncs.Add(1); synced.Add(int64(n)) }
	})
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				g := reg(fmt.Sprintf("u%d", w), fmt.Sprintf("A-%d-%d", w, i), tok1, "INBOX")
				if err := r.Register(context.Background(), g); err != nil {
					t.Errorf("Register: %v", err)
				}
				r.Lookup(fmt.Sprintf("u%d", (w+1)%32), "INBOX", false)
			}
		}()
	}
	wg.Wait()
	// Group commit: concurrent registrations share fsyncs.
	if synced.Load() != 32*20 || syncs.Load() >= synced.Load() {
		t.Errorf("%d records in %d fsyncs; want 640 records in fewer fsyncs", synced.Load(), syncs.Load())
	}
	crash(r)
	r = open(t, path, c, func(o *setup) { o.MaxDevicesPerUser = 1000 })
	defer r.Close()
	if _, n := r.Stats(); n != 32*20 {
		t.Fatalf("after crash %d registrations, want %d", n, 32*20)
	}
}

func TestJournalWriteFailureRefusesAndRecovers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	r := open(t, path, c)
	mustRegister(t, r, reg("alice", acc1, tok1))
	if err := r.Health().WriteErr; err != nil {
		t.Fatalf("Writable before the failure: %v", err)
	}
	jr(r).seg.Close() // the next write fails
	if err := r.Register(context.Background(), reg("bob", acc2, tok2)); err == nil {
		t.Fatal("Register succeeded although the journal write failed")
	}
	if err := r.Health().WriteErr; err == nil {
		t.Error("Writable reports no problem after a failed write")
	}
	mustRegister(t, r, reg("carol", acc2, tok2))
	if err := r.Health().WriteErr; err != nil {
		t.Errorf("Writable after recovery: %v", err)
	}
	crash(r)
	r = open(t, path, c)
	defer r.Close()
	if !r.Lookup("carol", "INBOX", false).KnownUser || !r.Lookup("alice", "INBOX", false).KnownUser {
		t.Fatal("acknowledged registrations lost after a failed journal write")
	}
}

// A file from a newer xapsd is not damage: it stops the start instead of
// being salvaged and overwritten. (Damaged files: salvage_test.go.)
func TestNewerFormatIsAnError(t *testing.T) {
	for name, content := range map[string]string{
		"newer": `{"Version":3,"Seq":1,"Registrations":[]}`,
	} {
		path := filepath.Join(t.TempDir(), "database.json")
		os.WriteFile(path, []byte(content), 0o600)
		_, err := openWith(defaults(path))
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: err = %v, want an error naming the file", name, err)
		}
	}
	// An empty file is an empty registry, as for the old daemon.
	path := filepath.Join(t.TempDir(), "database.json")
	os.WriteFile(path, nil, 0o600)
	r, err := openWith(defaults(path))
	if err != nil {
		t.Fatalf("empty file: %v", err)
	}
	r.Close()
}

func TestClosedRegistryRefuses(t *testing.T) {
	r := open(t, filepath.Join(t.TempDir(), "database.json"), newClock())
	r.Close()
	if err := r.Register(context.Background(), reg("a", acc1, tok1)); err != registry.ErrClosed {
		t.Errorf("Register after Close = %v", err)
	}
}

func TestImportOfTheOldFormatKeepsNewerAndSkipsExpired(t *testing.T) {
	c := newClock()
	legacy := []byte(`{"Users":{"Bob":{"Accounts":{"` + acc2 + `":{"DeviceToken":"` + tok2 + `","Mailboxes":["INBOX"],"RegistrationTime":"2026-10-31T12:00:00Z"}}},
"old":{"Accounts":{"X":{"DeviceToken":"` + tok1 + `","Mailboxes":["INBOX"],"RegistrationTime":"2020-01-01T00:00:00Z"}}},
"alice":{"Accounts":{"` + acc1 + `":{"DeviceToken":"` + tok1 + `","Mailboxes":["INBOX"],"RegistrationTime":"2026-10-01T12:00:00Z"}}}}}`)
	regs, err := ParseFile(legacy)
	if err != nil || len(regs) != 3 {
		t.Fatalf("ParseFile = %d, %v", len(regs), err)
	}
	r := open(t, filepath.Join(t.TempDir(), "database.json"), c)
	defer r.Close()
	mustRegister(t, r, reg("alice", acc1, tok1, "INBOX", "Notes")) // newer than the imported copy
	n, err := r.Import(context.Background(), regs)
	if err != nil || n != 1 {
		t.Fatalf("Import = %d, %v; want 1 (bob; alice is older here, old is past the TTL)", n, err)
	}
	if !r.Lookup("bob", "INBOX", false).KnownUser || r.Lookup("old", "INBOX", false).KnownUser {
		t.Error("wrong users imported")
	}
	if got := r.List("alice"); len(got) != 1 || len(got[0].Mailboxes) != 2 {
		t.Errorf("import overwrote a newer registration: %+v", got)
	}
	if _, err := ParseFile([]byte("{")); err == nil {
		t.Error("ParseFile accepted broken JSON")
	}
}

func TestSecondOpenOfOneFileIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	r := open(t, path, newClock())
	if _, err := openWith(defaults(path)); err == nil || !strings.Contains(err.Error(), "in use by another xapsd") {
		t.Fatalf("second Open = %v", err)
	}
	r.Close()
	r2 := open(t, path, newClock())
	r2.Close()
}

// Users are filed the way Dovecot folds them: ASCII letters only.
func TestUsersFoldASCIIOnly(t *testing.T) {
	r := open(t, filepath.Join(t.TempDir(), "database.json"), newClock())
	defer r.Close()
	mustRegister(t, r, reg("\u212Aim@Example.COM", acc1, tok1)) // a Kelvin sign, not K
	if r.Lookup("kim@example.com", "INBOX", false).KnownUser {
		t.Error("a Kelvin sign was filed under k")
	}
	if !r.Lookup("\u212AIM@EXAMPLE.com", "INBOX", false).KnownUser {
		t.Error("ASCII case was not folded")
	}
	for in, want := range map[string]string{"Alice": "alice", "ÄRGER": "Ärger", "\u212A": "\u212A", "": "", "abc": "abc"} {
		if got := registry.FoldUser(in); got != want {
			t.Errorf("registry.FoldUser(%q) = %q, want %q", in, got, want)
		}
	}
}

// MaxRegistrations holds under concurrent new users; a re-registration
// still works at the cap, and a removal makes room.
func TestMaxRegistrationsHoldsUnderConcurrentNewUsers(t *testing.T) {
	r := open(t, filepath.Join(t.TempDir(), "database.json"), newClock(), func(o *setup) { o.MaxRegistrations = 3 })
	defer r.Close()
	var ok, full atomic.Int64
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch err := r.Register(context.Background(), reg(fmt.Sprintf("u%d", i), acc1, tok1)); err {
			case nil:
				ok.Add(1)
			case registry.ErrFull:
				full.Add(1)
			default:
				t.Errorf("Register: %v", err)
			}
		}()
	}
	wg.Wait()
	if _, n := r.Stats(); n != 3 || ok.Load() != 3 || full.Load() != 17 {
		t.Fatalf("%d stored, %d accepted, %d refused; want 3, 3, 17", n, ok.Load(), full.Load())
	}
	g := r.List("")[0]
	mustRegister(t, r, reg(g.User, g.AccountID, g.DeviceToken, "INBOX", "Notes"))
	removed(r, g.Key, time.Time{})
	mustRegister(t, r, reg("newcomer", acc1, tok1))
}

func TestExportIsAFileTheRegistryOpens(t *testing.T) {
	at := time.Date(2026, 11, 30, 10, 0, 0, 123456000, time.UTC)
	regs := []registry.Registration{
		{Key: registry.Key{User: "alice", AccountID: "A", DeviceToken: "T1"}, Mailboxes: []string{"INBOX", "Entw&APw-rfe"}, Registered: at},
		{Key: registry.Key{User: "bob", AccountID: "B", DeviceToken: "T2"}, Mailboxes: []string{"INBOX"}, Registered: at.Add(time.Minute)},
	}
	var buf bytes.Buffer
	if err := Export(&buf, regs); err != nil {
		t.Fatal(err)
	}
	parsed, err := ParseFile(buf.Bytes())
	if err != nil || len(parsed) != 2 {
		t.Fatalf("ParseFile of an export: %v %v", parsed, err)
	}
	path := filepath.Join(t.TempDir(), "database.json")
	os.WriteFile(path, buf.Bytes(), 0o600)
	r, err := openWith(defaults(path, func(s *setup) { s.Now = func() time.Time { return at } }))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := r.List("")
	if len(got) != 2 || !got[0].Registered.Equal(at) || strings.Join(got[0].Mailboxes, ",") != "INBOX,Entw&APw-rfe" ||
		got[1].User != "bob" {
		t.Errorf("opened export: %+v", got)
	}
	if h := r.Health(); len(h.Damage) > 0 {
		t.Errorf("an export opens as damaged: %v", h.Damage)
	}
}

// A device token in upper and in lower case is one device: one
// registration, stored upper case, whichever spelling comes and goes.
func TestTokenSpellingsAreOneRegistration(t *testing.T) {
	lower := strings.ToLower(tok2)
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	r := open(t, path, c)
	mustRegister(t, r, reg("alice", acc1, lower))
	c.Add(time.Second)
	mustRegister(t, r, reg("alice", acc1, tok2, "INBOX", "Notes"))
	if got := r.List("alice"); len(got) != 1 || got[0].DeviceToken != tok2 || len(got[0].Mailboxes) != 2 {
		t.Fatalf("List = %+v, want one registration, token %s", got, tok2)
	}
	if !removed(r, registry.Key{User: "alice", AccountID: acc1, DeviceToken: lower}, time.Time{}) || len(r.List("alice")) != 0 {
		t.Error("Remove by the lower-case token did not remove the registration")
	}
	r.Close()

	// A snapshot an older xapsd wrote with both spellings: the newer wins,
	// whatever the order in the file.
	older := registry.Registration{Key: registry.Key{User: "bob", AccountID: acc1, DeviceToken: lower}, Mailboxes: []string{"INBOX"}, Registered: c.Now().Add(-time.Hour)}
	newer := registry.Registration{Key: registry.Key{User: "bob", AccountID: acc1, DeviceToken: tok2}, Mailboxes: []string{"INBOX", "Newer"}, Registered: c.Now().Add(-time.Minute)}
	for _, order := range [][]registry.Registration{{older, newer}, {newer, older}} {
		p := filepath.Join(t.TempDir(), "database.json")
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		Export(f, order)
		f.Close()
		r := open(t, p, c)
		got := r.List("bob")
		if len(got) != 1 || got[0].DeviceToken != tok2 || !slices.Equal(got[0].Mailboxes, newer.Mailboxes) {
			t.Errorf("loaded %+v, want the newer registration once, token %s", got, tok2)
		}
		if res := r.Lookup("bob", "INBOX", false); len(res.Targets) != 1 {
			t.Errorf("one event pushes %d times", len(res.Targets))
		}
		r.Close()
	}
}

// Users finds user names by a rule, sorted and capped, for xapsd diagnose.
func TestUsersListsMatchingNamesSortedAndCapped(t *testing.T) {
	r := open(t, filepath.Join(t.TempDir(), "db.json"), newClock())
	defer r.Close()
	for _, u := range []string{"alice", "alice@example.org", "bob@example.org", "alice@other.example"} {
		mustRegister(t, r, reg(u, "ACC", tok1))
	}
	alice := func(u string) bool { return strings.HasPrefix(u, "alice") }
	if got := r.Users(alice, 10); strings.Join(got, " ") != "alice alice@example.org alice@other.example" {
		t.Errorf("users %q", got)
	}
	if got := r.Users(alice, 2); len(got) != 2 {
		t.Errorf("limit 2: %q", got)
	}
}
