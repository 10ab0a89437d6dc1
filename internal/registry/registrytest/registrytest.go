// Package registrytest holds what the tests of the registry and of its
// stores share: registrations to register, a Store that keeps its
// changes in memory, and checks written once.
package registrytest

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/config"
	"github.com/xapsd/xapsd/internal/registry"
)

// Account ids and device tokens as iOS sends them.
const (
	Acc1 = "0715A26B-CA09-4730-A419-793000CA982E"
	Acc2 = "1F2E3D4C-0000-4000-8000-ABCDEFABCDEF"
	Tok1 = "2918390218931890821908309283098109381029309829018310983092892829"
	Tok2 = "AAAA390218931890821908309283098109381029309829018310983092892829"
)

// Start is the time the tests' clocks start at.
var Start = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// Reg is a registration of user's device for boxes (INBOX when none).
func Reg(user, acc, tok string, boxes ...string) registry.Registration {
	if len(boxes) == 0 {
		boxes = []string{"INBOX"}
	}
	return registry.Registration{Key: registry.Key{User: user, AccountID: acc, DeviceToken: tok}, Mailboxes: boxes}
}

// MustRegister registers g or fails the test.
func MustRegister(t testing.TB, r *registry.Registry, g registry.Registration) {
	t.Helper()
	if err := r.Register(context.Background(), g); err != nil {
		t.Fatalf("Register: %v", err)
	}
}

// Tokens are the device tokens a lookup found, sorted.
func Tokens(res registry.LookupResult) []string {
	var out []string
	for _, k := range res.Targets {
		out = append(out, k.DeviceToken)
	}
	slices.Sort(out)
	return out
}

// Kept is a Store that keeps the changes committed to it in memory: a
// registry opened on it again loads them, as one opened on the files
// after a crash replays the journal. It is this daemon's alone (Shared
// is false), like the files.
type Kept struct {
	changes []registry.Change
	// Refuse, when set, refuses every commit with this error, as a full
	// disk does. Set it before the change that is to be refused.
	Refuse error
}

// Load replays every committed change.
func (k *Kept) Load(_ context.Context, m *registry.Memory) error {
	for _, c := range k.changes {
		if c.Del {
			m.Delete(c.Key)
		} else {
			m.Put(c.Registration)
		}
	}
	return nil
}

// Follow returns at once: nobody else changes the store.
func (k *Kept) Follow(*registry.Memory) {}

// Shared is false.
func (k *Kept) Shared() bool { return false }

// Commit keeps the changes, unless Refuse is set.
func (k *Kept) Commit(_ context.Context, changes []registry.Change) (registry.Committed, error) {
	if k.Refuse != nil {
		return registry.Committed{}, k.Refuse
	}
	k.changes = append(k.changes, changes...)
	return registry.Committed{}, nil
}

// Expire commits the removals memory found.
func (k *Kept) Expire(ctx context.Context, _ time.Time, old []registry.Change) (registry.Committed, int, error) {
	c, err := k.Commit(ctx, old)
	return c, len(old), err
}

// Exclusive runs work.
func (k *Kept) Exclusive(_ context.Context, _ string, work func() error) (bool, error) {
	return true, work()
}

// Health is always fine.
func (k *Kept) Health() registry.Health { return registry.Health{} }

// Close does nothing: the changes stay for the next registry.
func (k *Kept) Close() error { return nil }

// Defaults are the options the daemon opens the registry with, from the
// configuration's defaults, changed by mods.
func Defaults(mods ...func(*registry.Options)) registry.Options {
	c := config.Default()
	o := registry.Options{
		RegistrationTTL:      c.RegistrationTTL,
		MaxDevicesPerAccount: c.MaxDevicesPerAccount,
		MaxDevicesPerUser:    config.MaxDevicesPerUser,
		MaxRegistrations:     c.MaxRegistrations,
		RegistrationRefresh:  config.RegistrationRefresh,
	}
	for _, m := range mods {
		m(&o)
	}
	return o
}

// Open opens a registry on a new Kept store, for tests that need a
// registry but not its files; it is closed when the test ends.
func Open(t testing.TB, o registry.Options) *registry.Registry {
	t.Helper()
	r, err := registry.Open(&Kept{}, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// Removed calls Remove and says whether it deleted the registration of
// k: it was there, and the store took its removal (it was neither kept
// for being newer than before nor refused).
func Removed(r *registry.Registry, k registry.Key, before time.Time) bool {
	had := false
	for _, g := range r.List(k.User) {
		if g.AccountID == k.AccountID && g.DeviceToken == registry.FoldToken(k.DeviceToken) {
			had = true
		}
	}
	kept, err := r.Remove(context.Background(), k, before)
	return had && !kept && err == nil
}

// Expire calls Expire and returns how many it removed, failing the test
// when the store could not remove them.
func Expire(t testing.TB, r *registry.Registry, now time.Time) int {
	t.Helper()
	n, err := r.Expire(context.Background(), now)
	if err != nil {
		t.Fatalf("Expire: %v", err)
	}
	return n
}
