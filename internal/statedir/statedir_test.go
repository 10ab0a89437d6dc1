package statedir

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

// Every file of the state folder has one name, the one the docs and the
// packaging (which makes apple-push/ writable) know.
func TestEveryFileOfTheFolderIsNamedHere(t *testing.T) {
	d := New("/var/lib/xapsd/database.json")
	at := time.Date(2026, 11, 1, 12, 30, 5, 0, time.UTC)
	for _, tc := range []struct{ what, got, want string }{
		{"folder", d.Folder(), "/var/lib/xapsd"},
		{"snapshot", d.Snapshot(), "/var/lib/xapsd/database.json"},
		{"lock", d.Lock(), "/var/lib/xapsd/database.json.lock"},
		{"segment", d.Segment(501, 1700000000000000000), "/var/lib/xapsd/database.json.journal.00000000000000000501-1700000000000000000"},
		{"legacy backup", d.LegacyBackup(at), "/var/lib/xapsd/database.json.legacy-20261101T123005Z.bak"},
		{"damaged copy", d.Damaged(at), "/var/lib/xapsd/database.json.damaged-20261101T123005Z"},
		{"admin socket", d.AdminSocket(), "/var/lib/xapsd/xapsd.sock"},
		{"pending pushes", d.PendingPushes(), "/var/lib/xapsd/pending-pushes.json"},
		{"Apple certificates", d.AppleCerts(), "/var/lib/xapsd/apple-push"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: %q, want %q", tc.what, tc.got, tc.want)
		}
	}
	if first, ok := d.SegmentStart(d.Segment(501, 7)); !ok || first != 501 {
		t.Errorf("SegmentStart = %d, %v; want 501", first, ok)
	}
}

func TestAppleCertsIsApplePushBesideTheDatabase(t *testing.T) {
	if got := New("/var/lib/xapsd/database.json").AppleCerts(); got != "/var/lib/xapsd/apple-push" {
		t.Errorf("AppleCerts = %q", got)
	}
}

// Segments come in the order they were written, whatever the order of
// their names as strings, and files that only look like segments are
// left out.
func TestSegmentsAreListedInWriteOrder(t *testing.T) {
	d := New(filepath.Join(t.TempDir(), "database.json"))
	want := []string{d.Segment(1, 9), d.Segment(1, 10), d.Segment(20, 3)}
	for _, p := range append([]string{d.Snapshot() + ".journal.x-1", d.Snapshot() + ".journal.1"}, want[2], want[1], want[0]) {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	got, err := d.Segments()
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("Segments = %q, %v; want %q", got, err, want)
	}
	files := d.RegistryFiles()
	for _, p := range append(want, d.Snapshot(), d.Lock()) {
		if !slices.Contains(files, p) {
			t.Errorf("RegistryFiles lacks %s", p)
		}
	}
}

// Make creates a missing folder private, and takes the write bit for
// everyone away from a folder of xapsd's own, saying so.
func TestMakeCreatesAndRepairsTheFolder(t *testing.T) {
	log, hook := logtest.NewNullLogger()
	d := New(filepath.Join(t.TempDir(), "a", "b", "database.json"))
	if err := d.Make(log); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(d.Folder()); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("folder made with %v, %v; want mode 700", st.Mode(), err)
	}
	os.Chmod(d.Folder(), 0o777)
	if err := d.Make(log); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(d.Folder()); st.Mode().Perm() != 0o775 {
		t.Errorf("mode %o, want 775", st.Mode().Perm())
	}
	if e := hook.LastEntry(); e == nil || e.Level != logrus.WarnLevel || !strings.Contains(e.Message, "every user") {
		t.Errorf("no warning about the repair: %+v", e)
	}
}
