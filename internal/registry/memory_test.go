package registry

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

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
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	r := open(t, path, c)
	for i := range 300 {
		c.Add(time.Second)
		mustRegister(t, r, reg("alice", acc1, tok1, distinctBoxes(i, 20)...))
		mustRegister(t, r, reg(fmt.Sprintf("user%d", i%3), acc2, tok2, distinctBoxes(1000+i, 5)...))
	}
	mustRegister(t, r, reg("bob", acc1, tok1, "INBOX"))
	mustRegister(t, r, reg("carol", acc1, tok1, "INBOX"))
	sets := func(r *Registry) int {
		r.mu.RLock()
		defer r.mu.RUnlock()
		return len(r.boxes)
	}
	// alice's, the three users', and the INBOX list bob and carol share.
	if n := sets(r); n != 5 {
		t.Errorf("%d mailbox lists held for 6 registrations with 5 distinct lists", n)
	}
	crash(r)
	r = open(t, path, c)
	if n := sets(r); n != 5 {
		t.Errorf("after replaying the journal: %d mailbox lists held, want 5", n)
	}
	mustRegister(t, r, reg("carol", acc1, tok1, "Notes"))
	r.Remove(Key{"bob", acc1, tok1}, time.Time{})
	if n := sets(r); n != 5 { // INBOX gone, Notes new
		t.Errorf("after re-registering and removing: %d lists, want 5", n)
	}
	if got := r.Lookup("carol", "Notes", false); len(got.Targets) != 1 {
		t.Errorf("lookup after the change: %+v", got)
	}
	r.Close()
}

// Large records make the journal compact by size, not only every
// CompactAfter records.
func TestJournalCompactsBySize(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	r := open(t, path, c, func(o *Options) { o.CompactAfter = 1_000_000; o.CompactAfterBytes = 256 << 10 })
	for i := range 200 {
		c.Add(time.Second)
		mustRegister(t, r, reg("alice", acc1, tok1, distinctBoxes(i, 400)...)) // about 10 KB a record
	}
	r.jr().compactW.Wait()
	var total int64
	for _, s := range segmentFiles(path) {
		if st, err := os.Stat(s); err == nil {
			total += st.Size()
		}
	}
	if total > 512<<10 {
		t.Errorf("journal holds %d KB after 2 MB of records; it should compact at 256 KB", total>>10)
	}
	r.Close()
}
