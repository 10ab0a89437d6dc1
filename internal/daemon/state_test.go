package daemon_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/pgtest"
	"github.com/xapsd/xapsd/internal/testutil/xapsdtest"
)

// A damaged snapshot does not stop xapsd (under Restart=on-failure, a
// restart loop without push for anyone): it starts with what could be
// read, and /readyz and the metrics say what happened.
func TestDamagedSnapshotStartsAndIsReported(t *testing.T) {
	dir := testutil.TempDir(t)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", testutil.MustFreePort(t))
	addr := writeConfig(t, dir, "apnsEndpoint: dry-run\nmetricsListenAddr: "+metricsAddr+"\n")
	d := xapsdtest.Start(t, dir, xapsdtest.Options{})
	for i := range 40 {
		if status, body := post(t, addr, "/register", registerBody(fmt.Sprintf("user%d@example.com", i), acc, token(i))); status != 200 {
			t.Fatalf("register: %d %s", status, body)
		}
	}
	if code := exitCode(d.Stop()); code != 0 {
		t.Fatalf("exit %d", code)
	}
	db := filepath.Join(dir, "state", "database.json")
	data, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	// Cut in the middle of a line, as a full disk or a crash of the
	// file system might.
	if err := os.WriteFile(db, data[:len(data)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	d = xapsdtest.Start(t, dir, xapsdtest.Options{})
	code, body := get(t, "http://"+metricsAddr+"/readyz")
	if code != 200 || !strings.Contains(body, "registry: database.json was damaged") {
		t.Errorf("/readyz = %d %q, want ok and what was damaged", code, body)
	}
	_, metrics := get(t, "http://"+metricsAddr+"/metrics")
	if !strings.Contains(metrics, "\nxapsd_registry_damaged 1\n") && !strings.Contains(metrics, "\nxapsd_registry_damaged 2\n") {
		t.Errorf("xapsd_registry_damaged not reported:\n%s", grepLines(metrics, "xapsd_registry_damaged"))
	}
	if !d.WaitLog("the registry snapshot is damaged", 5*time.Second) {
		t.Error("no error line about the damaged snapshot")
	}
	copies, _ := filepath.Glob(db + ".damaged-*")
	if len(copies) != 1 {
		t.Errorf("damaged copies: %v", copies)
	} else if b, _ := os.ReadFile(copies[0]); !bytes.Equal(b, data[:len(data)/2]) {
		t.Error("the damaged copy is not the damaged file")
	}
	if status, _ := post(t, addr, "/register", registerBody("after@example.com", acc, token(99))); status != 200 {
		t.Errorf("register after salvage: %d", status)
	}
}

// With the registry in PostgreSQL nothing of it is in the state folder:
// the daemon makes the folder for its admin socket (and the pushes a stop
// keeps), and no snapshot, journal or lock appears there.
func TestPostgresLeavesNoRegistryFileInTheStateFolder(t *testing.T) {
	pg := pgtest.StartT(t, pgtest.Options{})
	dir := testutil.TempDir(t)
	writeConfig(t, dir, "apnsEndpoint: dry-run\ndatabaseURL: "+pg.URL+"\n")
	d := xapsdtest.Start(t, dir, xapsdtest.Options{})
	if status, body := post(t, d.Addr, "/register", registerBody("alice@example.com", acc, token(1))); status != 200 {
		t.Fatalf("register: %d %s", status, body)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatalf("the state folder: %v", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "database.json") {
			t.Errorf("%s in the state folder with the registry in PostgreSQL", e.Name())
		}
	}
}
