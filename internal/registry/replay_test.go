package registry

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

// journalWith registers n users, abandons the registry as kill -9 would,
// and returns the one segment holding their records.
func journalWith(t *testing.T, path string, c *clock, n int) string {
	t.Helper()
	r := open(t, path, c)
	for i := range n {
		mustRegister(t, r, reg(fmt.Sprintf("user%d", i), acc1, tok1))
	}
	seg := r.jr().segPath
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
	r := open(t, path, c, func(o *Options) { o.Log = log })
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
