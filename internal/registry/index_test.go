package registry_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/registry/registrytest"
	"github.com/xapsd/xapsd/internal/testutil"
)

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
)

// open opens a registry on st, as a daemon starting on its files would.
func open(t *testing.T, st registry.Store, c *testutil.Clock) *registry.Registry {
	t.Helper()
	r, err := registry.Open(st, registry.Options{Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// crash leaves r behind without Close, as kill -9 would.
func crash(*registry.Registry) {}

func distinctBoxes(i, n int) []string {
	boxes := make([]string, n)
	for k := range boxes {
		boxes[k] = fmt.Sprintf("Folder %d of list %d", k, i)
	}
	return boxes
}

// Memory follows the live registrations: a mailbox list no registration
// uses any more is freed, and replaying the journal does not bring the
// dead ones back.
func TestUnusedMailboxListsAreFreed(t *testing.T) {
	st := &registrytest.Kept{}
	c := testutil.NewClock(registrytest.Start)
	r := open(t, st, c)
	for i := range 300 {
		c.Add(time.Second)
		mustRegister(t, r, reg("alice", acc1, tok1, distinctBoxes(i, 20)...))
		mustRegister(t, r, reg(fmt.Sprintf("user%d", i%3), acc2, tok2, distinctBoxes(1000+i, 5)...))
	}
	mustRegister(t, r, reg("bob", acc1, tok1, "INBOX"))
	mustRegister(t, r, reg("carol", acc1, tok1, "INBOX"))
	sets := registry.MailboxLists
	// alice's, the three users', and the INBOX list bob and carol share.
	if n := sets(r); n != 5 {
		t.Errorf("%d mailbox lists held for 6 registrations with 5 distinct lists", n)
	}
	crash(r)
	r = open(t, st, c)
	if n := sets(r); n != 5 {
		t.Errorf("after replaying the journal: %d mailbox lists held, want 5", n)
	}
	mustRegister(t, r, reg("carol", acc1, tok1, "Notes"))
	removed(r, registry.Key{User: "bob", AccountID: acc1, DeviceToken: tok1}, time.Time{})
	if n := sets(r); n != 5 { // INBOX gone, Notes new
		t.Errorf("after re-registering and removing: %d lists, want 5", n)
	}
	if got := r.Lookup("carol", "Notes", false); len(got.Targets) != 1 {
		t.Errorf("lookup after the change: %+v", got)
	}
	r.Close()
}

// Remove says apart what the caller acts on differently: a registration
// kept because the device registered again after Apple's time, a removal
// the store could not make (the registration stays), and a removal.
func TestRemoveSaysKeptApartFromTheStoresError(t *testing.T) {
	st := &registrytest.Kept{}
	c := testutil.NewClock(registrytest.Start)
	r := open(t, st, c)
	defer r.Close()
	ctx := context.Background()
	k := registry.Key{User: "alice", AccountID: acc1, DeviceToken: tok1}
	mustRegister(t, r, reg(k.User, k.AccountID, k.DeviceToken))
	if kept, err := r.Remove(ctx, k, c.Now().Add(-time.Second)); !kept || err != nil {
		t.Errorf("a 410 older than the registration: kept %v, %v; want kept", kept, err)
	}
	full := errors.New("no space left on device")
	st.Refuse = full
	if kept, err := r.Remove(ctx, k, c.Now().Add(time.Second)); kept || !errors.Is(err, full) {
		t.Errorf("a removal the store refuses: kept %v, %v; want the store's error", kept, err)
	}
	if !r.Lookup(k.User, "INBOX", false).KnownUser {
		t.Error("a removal the store refused changed memory")
	}
	st.Refuse = nil
	if kept, err := r.Remove(ctx, k, c.Now().Add(time.Second)); kept || err != nil || r.Lookup(k.User, "INBOX", false).KnownUser {
		t.Errorf("a removal: kept %v, %v, still known %v", kept, err, r.Lookup(k.User, "INBOX", false).KnownUser)
	}
}
