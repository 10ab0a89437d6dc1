package filestore

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

// snapshotWith writes a registry of n users through Close and returns the
// snapshot's bytes.
func snapshotWith(t *testing.T, path string, c *clock, n int) []byte {
	t.Helper()
	r := open(t, path, c)
	for i := range n {
		mustRegister(t, r, reg(fmt.Sprintf("user%03d", i), acc1, tok1, "INBOX", fmt.Sprintf("Folder %d", i)))
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// nthLine is the offset just after the n-th newline of b.
func nthLine(b []byte, n int) int {
	at := 0
	for range n {
		at += bytes.IndexByte(b[at:], '\n') + 1
	}
	return at
}

// A damaged snapshot does not stop the start: every whole line is kept,
// the damaged file is kept beside it, and Health says what happened.
func TestDamagedSnapshotIsSalvaged(t *testing.T) {
	cases := []struct {
		name    string
		damage  func([]byte) []byte
		minKept int
		maxKept int
	}{
		{"truncated mid-line", func(b []byte) []byte { return b[:len(b)*2/3] }, 60, 67},
		{"truncated after a line", func(b []byte) []byte { return b[:nthLine(b, 51)] }, 50, 50},
		{"NUL block", func(b []byte) []byte {
			copy(b[len(b)/2:], bytes.Repeat([]byte{0}, 400))
			return b
		}, 95, 99},
		{"garbage line", func(b []byte) []byte {
			at := nthLine(b, 41)
			return append(append(b[:at:at], "this is not JSON at all,\n"...), b[at:]...)
		}, 100, 100},
		{"changed quote", func(b []byte) []byte { return bytes.Replace(b, []byte(`"user042"`), []byte(`'user042"`), 1) }, 99, 99},
		{"header changed", func(b []byte) []byte { return bytes.Replace(b, []byte(`"Seq":`), []byte(`"Seq';`), 1) }, 100, 100},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "database.json")
			c := newClock()
			damaged := tc.damage(snapshotWith(t, path, c, 100))
			if err := os.WriteFile(path, damaged, 0o600); err != nil {
				t.Fatal(err)
			}
			log, hook := logtest.NewNullLogger()
			r, err := openWith(defaults(path, func(s *setup) { s.Now = c.Now; s.Log = log }))
			if err != nil {
				t.Fatalf("Open refused a damaged snapshot: %v", err)
			}
			_, n := r.Stats()
			if n < tc.minKept || n > tc.maxKept {
				t.Errorf("kept %d registrations, want %d to %d", n, tc.minKept, tc.maxKept)
			}
			h := r.Health()
			if h.Damaged == 0 || len(h.Damage) == 0 || !strings.Contains(h.Damage[0], "damaged") {
				t.Errorf("Health = %+v, want the damage reported", h)
			}
			copies, _ := filepath.Glob(path + ".damaged-*")
			if len(copies) != 1 {
				t.Fatalf("damaged copies %v", copies)
			}
			if b, _ := os.ReadFile(copies[0]); !bytes.Equal(b, damaged) {
				t.Error("the damaged copy differs from the damaged file")
			}
			logged := false
			for _, e := range hook.AllEntries() {
				if e.Level == logrus.ErrorLevel && strings.Contains(e.Message, "damaged") && e.Data["kept"] == n {
					logged = true
				}
			}
			if !logged {
				t.Error("no error line with the counts")
			}
			mustRegister(t, r, reg("new", acc2, tok2))
			r.Close()
			// The salvaged state was written clean: no second salvage.
			r = open(t, path, c)
			defer r.Close()
			if h := r.Health(); h.Damaged != 0 {
				t.Errorf("second start found damage again: %+v", h)
			}
			if _, m := r.Stats(); m != n+1 {
				t.Errorf("second start: %d registrations, want %d", m, n+1)
			}
		})
	}
}

// A damaged header loses the snapshot's sequence number; the journal is
// then replayed whole, and what it holds is not lost.
func TestSalvageWithDamagedHeaderKeepsTheJournal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	c := newClock()
	data := snapshotWith(t, path, c, 10)
	r := open(t, path, c)
	mustRegister(t, r, reg("journal-only", acc2, tok2))
	crash(r)
	os.WriteFile(path, bytes.Replace(data, []byte(`"Seq":`), []byte(`"Seq';`), 1), 0o600)
	r = open(t, path, c)
	defer r.Close()
	if _, n := r.Stats(); n != 11 || !r.Lookup("journal-only", "INBOX", false).KnownUser {
		t.Errorf("%d registrations, want the 10 of the snapshot and the one of the journal", n)
	}
}

// One wrongly typed entry of the old daemon's database costs that entry,
// not the migration.
func TestBadLegacyEntriesAreSkippedWithACount(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database.json")
	legacy := `{"Users":{
  "alice":{"Accounts":{"` + acc1 + `":{"DeviceToken":"` + tok1 + `","Mailboxes":["INBOX"]}}},
  "bob":{"Accounts":{"` + acc1 + `":{"DeviceToken":"` + tok1 + `","Mailboxes":"INBOX"}}},
  "carol":{"Accounts":{"` + acc1 + `":{"DeviceToken":"` + tok1 + `","Mailboxes":["INBOX"],"RegistrationTime":42}}},
  "dave":{"Accounts":[]},
  "erin":{"Accounts":{"` + acc2 + `":{"DeviceToken":"` + tok2 + `","Mailboxes":["INBOX"]}}}}}`
	os.WriteFile(path, []byte(legacy), 0o600)
	r := open(t, path, newClock())
	defer r.Close()
	if u, _ := r.Stats(); u != 2 {
		t.Errorf("%d users migrated, want alice and erin", u)
	}
	if h := r.Health(); h.Damaged != 3 {
		t.Errorf("Health = %+v, want 3 skipped entries", h)
	}
}

// A snapshot deleted or emptied after a graceful stop (no journal left) is
// a loss too once xapsd ran in the folder; on a new install it is not.
func TestSnapshotLostAfterAStopIsReported(t *testing.T) {
	for name, content := range map[string]*string{"0 bytes": new(""), "{}": new("{}"), "missing": nil} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "database.json")
			c := newClock()
			snapshotWith(t, path, c, 5)
			if content == nil {
				os.Remove(path)
			} else {
				os.WriteFile(path, []byte(*content), 0o600)
			}
			r := open(t, path, c)
			defer r.Close()
			if h := r.Health(); len(h.Damage) != 1 || !strings.Contains(h.Damage[0], "every registration is lost") {
				t.Errorf("Health = %+v", h)
			}
		})
	}
	r := open(t, filepath.Join(t.TempDir(), "database.json"), newClock())
	defer r.Close()
	if h := r.Health(); h.Damaged != 0 {
		t.Errorf("a new install reports damage: %+v", h)
	}
}

// A snapshot that holds nothing, or none at all, next to journal segments
// that begin after the first record: the records before them are lost,
// and that is an error that says so, not silence.
func TestEmptyOrMissingSnapshotNextToTheJournalIsReported(t *testing.T) {
	for name, content := range map[string]*string{"0 bytes": new(""), "null": new("null"), "{}": new("{}"), "missing": nil} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "database.json")
			c := newClock()
			snapshotWith(t, path, c, 5) // snapshot up to record 5
			r := open(t, path, c)
			c.Add(time.Second)
			mustRegister(t, r, reg("later", acc2, tok2)) // record 6, in the journal
			crash(r)
			if content == nil {
				os.Remove(path)
			} else {
				os.WriteFile(path, []byte(*content), 0o600)
			}
			log, hook := logtest.NewNullLogger()
			r, err := openWith(defaults(path, func(s *setup) { s.Now = c.Now; s.Log = log }))
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer r.Close()
			if !r.Lookup("later", "INBOX", false).KnownUser {
				t.Error("the journal's registration was not kept")
			}
			h := r.Health()
			if len(h.Damage) != 1 || !strings.Contains(h.Damage[0], "before journal record 6 are lost") {
				t.Errorf("Health = %+v", h)
			}
			said := false
			for _, e := range hook.AllEntries() {
				switch {
				case e.Level == logrus.ErrorLevel && strings.Contains(e.Message, "lost"):
					said = true
				case e.Level <= logrus.WarnLevel && strings.Contains(e.Message, "sequence numbers skip"):
					t.Errorf("the lost snapshot was reported as a gap: %s", e.Message)
				}
			}
			if !said {
				t.Error("no error saying what was lost")
			}
		})
	}
}
