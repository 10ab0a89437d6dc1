package filestore

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/registry"
)

func distinctBoxes(i, n int) []string {
	boxes := make([]string, n)
	for k := range boxes {
		boxes[k] = fmt.Sprintf("Folder %d of list %d", k, i)
	}
	return boxes
}

// Large records make the journal compact by size, not only every
// CompactAfter records.
func TestJournalCompactsBySize(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	r := open(t, path, c, func(o *setup) { o.RegistryCompactAfter = 1_000_000; o.RegistryCompactAfterBytes = 256 << 10 })
	for i := range 200 {
		c.Add(time.Second)
		mustRegister(t, r, reg("alice", acc1, tok1, distinctBoxes(i, 400)...)) // about 10 KB a record
	}
	jr(r).compactW.Wait()
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

// heapAfterGC is the heap in use once garbage is collected.
func heapAfterGC() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// After a start with a large snapshot whose registrations have mostly
// expired, the registry holds memory for the live ones: the users map,
// made for the snapshot's size while loading, is made again for what is
// left (a Go map keeps its room when entries go).
func TestMapsFollowTheLiveRegistrationsAfterALoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	const total, live = 100_000, 10
	regs := make([]registry.Registration, total)
	for i := range regs {
		at := c.Now().Add(-2000 * time.Hour) // beyond the TTL
		if i < live {
			at = c.Now().Add(-time.Hour)
		}
		regs[i] = registry.Registration{Key: registry.Key{User: fmt.Sprintf("user%d@example.com", i), AccountID: acc1, DeviceToken: tok1},
			Mailboxes: []string{"INBOX"}, Registered: at}
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := Export(f, regs); err != nil {
		t.Fatal(err)
	}
	f.Close()
	regs = nil
	before := heapAfterGC()
	r := open(t, path, c)
	defer r.Close()
	jr(r).compactW.Wait()
	held := heapAfterGC() - before
	if users, n := r.Stats(); users != live || n != live {
		t.Fatalf("%d users, %d registrations after the load, want %d", users, n, live)
	}
	t.Logf("heap held for %d live registrations after loading %d: %d KB", live, total, held>>10)
	if held > 2<<20 {
		t.Errorf("the registry holds %d KB for %d registrations after loading a snapshot of %d: sized for the snapshot, not the live data", held>>10, live, total)
	}
}
