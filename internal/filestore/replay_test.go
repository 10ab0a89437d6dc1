package filestore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/xapsd/xapsd/internal/statedir"
)

// journalWith registers n users, abandons the registry as kill -9 would,
// and returns the one segment holding their records.
func journalWith(t *testing.T, path string, c *clock, n int) string {
	t.Helper()
	r := open(t, path, c)
	for i := range n {
		mustRegister(t, r, reg(fmt.Sprintf("user%d", i), acc1, tok1))
	}
	seg := jr(r).segPath
	crash(r)
	return seg
}

var seqField = regexp.MustCompile(`"Seq":\d+`)

// editLine changes line i (from 0) of a file with f.
func editLine(t *testing.T, file string, i int, f func(string) string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(data), "\n")
	lines[i] = f(lines[i])
	if err := os.WriteFile(file, []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
}

// One record edited to an absurd sequence number must not hide every
// later record, nor make the counter wrap and the next registrations
// replay as old ones.
func TestAbsurdSequenceNumbersAreNotAdopted(t *testing.T) {
	for name, seq := range map[string]string{"wrap": "18446744073709551615", "jump": "1000500"} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "database.json")
			c := newClock()
			seg := journalWith(t, path, c, 500)
			editLine(t, seg, 9, func(l string) string { return seqField.ReplaceAllString(l, `"Seq":`+seq) })
			r := open(t, path, c)
			if _, n := r.Stats(); n != 499 {
				t.Errorf("%d registrations after the edit, want the 499 intact ones", n)
			}
			if h := r.Health(); h.Damaged != 1 || len(h.Damage) != 1 {
				t.Errorf("Health = %+v, want the one damaged record reported", h)
			}
			for i := range 50 {
				mustRegister(t, r, reg(fmt.Sprintf("later%d", i), acc2, tok2))
			}
			crash(r)
			r = open(t, path, c)
			defer r.Close()
			if _, n := r.Stats(); n != 549 {
				t.Errorf("%d registrations after a kill, want 549: acknowledged ones were lost", n)
			}
		})
	}
}

// A missing record is a gap: replay says so and keeps everything else.
func TestSequenceGapsAreReported(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	seg := journalWith(t, path, c, 20)
	editLine(t, seg, 5, func(string) string { return "" })
	log, hook := logtest.NewNullLogger()
	r := open(t, path, c, func(o *setup) { o.Log = log })
	defer r.Close()
	if _, n := r.Stats(); n != 19 {
		t.Errorf("%d registrations, want 19", n)
	}
	warned := false
	for _, e := range hook.AllEntries() {
		if e.Level == logrus.WarnLevel && strings.Contains(e.Message, "skip") && e.Data["gaps"] == 1 {
			warned = true
		}
	}
	if !warned {
		t.Error("no warning about the gap in the sequence numbers")
	}
}

// An impossible number in the snapshot's header does not hide the
// journal either.
func TestAbsurdSnapshotSequenceReplaysTheJournal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	r := open(t, path, c)
	mustRegister(t, r, reg("alice", acc1, tok1))
	r.Close() // snapshot with Seq 1
	r = open(t, path, c)
	mustRegister(t, r, reg("bob", acc1, tok1))
	crash(r)
	editLine(t, path, 0, func(l string) string { return seqField.ReplaceAllString(l, `"Seq":18446744073709551615`) })
	r = open(t, path, c)
	defer r.Close()
	if u, _ := r.Stats(); u != 2 {
		t.Errorf("%d users, want alice from the snapshot and bob from the journal", u)
	}
	mustRegister(t, r, reg("carol", acc1, tok1))
}

// A record whose number is below its own segment's name is damage, not
// "already in the snapshot": the segment was started after the snapshot's
// last record. It is skipped as before, but reported like other damage
// (Health, so the metric and /readyz, and an error line).
func TestRecordBelowItsSegmentIsDamage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	r := open(t, path, c)
	for i := range 500 {
		mustRegister(t, r, reg(fmt.Sprintf("user%d", i), acc1, tok1))
	}
	r.Close() // the snapshot holds records 1 to 500
	r = open(t, path, c)
	mustRegister(t, r, reg("late", acc1, tok1))
	seg := jr(r).segPath
	crash(r)
	if !strings.Contains(filepath.Base(seg), ".journal.00000000000000000501-") {
		t.Fatalf("segment %s, want one named after record 501", seg)
	}
	editLine(t, seg, 0, func(l string) string { return seqField.ReplaceAllString(l, `"Seq":400`) })
	log, hook := logtest.NewNullLogger()
	r = open(t, path, c, func(o *setup) { o.Log = log })
	defer r.Close()
	h := r.Health()
	if h.Damaged != 1 || len(h.Damage) != 1 || !strings.Contains(h.Damage[0], filepath.Base(seg)+":1") {
		t.Errorf("Health = %+v, want the record at %s:1 reported as damaged", h, filepath.Base(seg))
	}
	logged := false
	for _, e := range hook.AllEntries() {
		if e.Level == logrus.ErrorLevel && strings.Contains(e.Message, "below its segment") {
			logged = true
		}
		if strings.Contains(e.Message, "nothing acknowledged was in them") {
			t.Errorf("the damage is logged as harmless: %s", e.Message)
		}
	}
	if !logged {
		t.Error("no error line about the damaged record")
	}
}

// Every record a segment holds is at or above the number in its name,
// also for the records queued while the writer starts a new segment, so
// a journal written under load replays without a record reported as
// damaged.
func TestSegmentsAreNamedAfterTheirFirstRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	r := open(t, path, c, func(o *setup) { o.RegistryCompactAfter = 7 })
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 150 {
				if err := r.Register(context.Background(), reg(fmt.Sprintf("w%d-%d", w, i), acc1, tok1)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	crash(r)
	segs, _ := filepath.Glob(path + ".journal.*")
	for _, s := range segs {
		start, _ := statedir.New(path).SegmentStart(s)
		data, _ := os.ReadFile(s)
		for n, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			if line == "" {
				continue
			}
			rec, err := decodeJournalLine([]byte(line))
			if err == nil && rec.Seq < start {
				t.Errorf("%s:%d holds record %d, below the segment's name", filepath.Base(s), n+1, rec.Seq)
			}
		}
	}
	r = open(t, path, c)
	defer r.Close()
	if h := r.Health(); h.Damaged != 0 {
		t.Errorf("Health = %+v after a crash under load, want no damage", h)
	}
	if _, n := r.Stats(); n != 8*150 {
		t.Errorf("%d registrations, want %d", n, 8*150)
	}
}
