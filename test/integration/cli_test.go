package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
)

func run(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(xapsdBin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	// The race detector's runtime waits a second at exit by default;
	// a command has no other threads to wait for.
	cmd.Env = append(os.Environ(), "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

func TestPassPrintsSHA256LikeTheOldDaemon(t *testing.T) {
	sum := sha256.Sum256([]byte("correct horse"))
	for _, flag := range []string{"-pass", "--pass"} {
		code, out, _ := run(t, "correct horse\n", flag)
		if code != 0 || out != hex.EncodeToString(sum[:])+"\n" {
			t.Errorf("%s: exit %d, stdout %q", flag, code, out)
		}
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := run(t, "", "--version")
	if code != 0 || !strings.HasPrefix(out, "xapsd ") {
		t.Errorf("--version: %d %q", code, out)
	}
}

func TestLegacyFlagsFindTheConfigAndCheckConfigRedacts(t *testing.T) {
	dir := testutil.TempDir(t)
	cfg := "loglevel: info\nport: '11619'\napnsEndpoint: dry-run\nappleId: admin@example.com\n" +
		"appleIdHashedPassword: " + strings.Repeat("ab", 32) + "\ndatabaseFile: db.json\n"
	os.WriteFile(filepath.Join(dir, "custom.yaml"), []byte(cfg), 0o600)
	code, out, errOut := run(t, "", "-configPath", dir, "-configName", "custom", "--check-config")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if strings.Contains(out, strings.Repeat("ab", 32)) || !strings.Contains(out, "<redacted>") {
		t.Errorf("secret not redacted:\n%s", out)
	}
	if !strings.Contains(out, filepath.Join(dir, "db.json")) {
		t.Errorf("relative databaseFile not resolved against the config folder:\n%s", out)
	}
}

func TestInvalidConfigFailsBeforeListening(t *testing.T) {
	dir := testutil.TempDir(t)
	os.WriteFile(filepath.Join(dir, "xapsd.yaml"), []byte("delay: -5\nport: 99999\n"), 0o600)
	code, _, errOut := run(t, "", "--config", filepath.Join(dir, "xapsd.yaml"))
	if code == 0 || !strings.Contains(errOut, "delay") || !strings.Contains(errOut, "port") {
		t.Errorf("exit %d, stderr %q; want non-zero naming delay and port", code, errOut)
	}
}

func TestLegacyDatabaseIsServedAfterMigration(t *testing.T) {
	dir := testutil.TempDir(t)
	os.MkdirAll(filepath.Join(dir, "state"), 0o700)
	legacy := `{"Users":{"alice@example.com":{"Accounts":{"` + acc + `":{"DeviceToken":"` + token(7) +
		`","Mailboxes":["INBOX"],"RegistrationTime":"` + time.Now().Format(time.RFC3339Nano) + `"}}}}}`
	os.WriteFile(filepath.Join(dir, "state", "database.json"), []byte(legacy), 0o644)
	addr := writeConfig(t, dir, "apnsEndpoint: dry-run\n")
	d := startDaemon(t, dir, addr)
	if status, _ := post(t, addr, "/notify", notifyBody("Alice@example.com", "INBOX", "MessageNew")); status != 200 {
		t.Fatalf("migrated user not found: %d", status)
	}
	if !d.waitLog("dry-run: would push", 5*time.Second) {
		t.Error("no push for the migrated device")
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "state", "database.json.legacy-*.bak")); len(m) != 1 {
		t.Errorf("backup files %v", m)
	}
	if d.stop() != 0 {
		t.Error("non-zero exit")
	}
	st, _ := os.Stat(filepath.Join(dir, "state", "database.json"))
	if st.Mode().Perm() != 0o600 {
		t.Errorf("database mode %v", st.Mode().Perm())
	}
}
