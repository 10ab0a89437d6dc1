package daemon

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/registry"
)

func TestPendingPushesRoundTripAndTheFileStaysUntilEachIsAnswered(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pending-pushes.json")
	keys := []registry.Key{{User: "a", AccountID: "A", DeviceToken: "aa"}, {User: "b", AccountID: "B", DeviceToken: "bb"}}
	if err := savePending(path, keys); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", st.Mode().Perm())
	}
	got, err := loadPending(path)
	if err != nil || !slices.Equal(got, keys) {
		t.Fatalf("loadPending = %v, %v", got, err)
	}
	// The file stays until every push in it has had its answer: a crash
	// before that must not lose them.
	var l leftovers
	l.track(path, got, logrus.New())
	l.done(keys[0])
	l.done(registry.Key{User: "other"})
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("file removed while a push in it had no answer yet: %v", err)
	}
	l.done(keys[1])
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Error("file not removed once every push in it had its answer")
	}
	// After stop, the file is the shutdown's.
	savePending(path, keys)
	l.track(path, keys, logrus.New())
	l.stop()
	l.done(keys[0])
	l.done(keys[1])
	if _, err := os.Stat(path); err != nil {
		t.Errorf("file removed after stop: %v", err)
	}
	os.Remove(path)
	if got, err := loadPending(path); err != nil || got != nil {
		t.Errorf("no file: %v, %v", got, err)
	}
	// Nothing left: no file.
	os.WriteFile(path, []byte("[]"), 0o600)
	if err := savePending(path, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Error("empty save left a file")
	}
	os.WriteFile(path, []byte("{"), 0o600)
	if _, err := loadPending(path); err == nil {
		t.Error("corrupt file accepted")
	}
}

// pending-pushes.json is not read through a symbolic link.
func TestPendingFileIsNotReadThroughALink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "secret")
	os.WriteFile(target, []byte(`[{"User":"a","AccountID":"A","DeviceToken":"aa"}]`), 0o600)
	path := filepath.Join(dir, "pending-pushes.json")
	os.Symlink(target, path)
	if keys, err := loadPending(path); err == nil || len(keys) != 0 {
		t.Errorf("loadPending through a link = %v, %v", keys, err)
	}
}
