package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
)

// A listener beyond loopback without a secret does not start, unless the
// admin says a firewall guards it; a secret file others may read does not
// start either.
func TestExposedListenerNeedsASecret(t *testing.T) {
	run := func(dir string) (string, error) {
		cmd := exec.Command(xapsdBin, "--config", filepath.Join(dir, "xapsd.yaml"))
		done := make(chan struct{})
		var out []byte
		var err error
		go func() { out, err = cmd.CombinedOutput(); close(done) }()
		select {
		case <-done:
			return string(out), err
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
			return string(out), nil
		}
	}
	dir := testutil.TempDir(t)
	writeConfig(t, dir, "apnsEndpoint: dry-run\nlistenAddr: 0.0.0.0\n")
	out, err := run(dir)
	if err == nil || !strings.Contains(out, "listens beyond this machine without authentication") {
		t.Errorf("0.0.0.0 without a secret: err %v, output:\n%s", err, out)
	}

	dir = testutil.TempDir(t)
	os.WriteFile(filepath.Join(dir, "plugin.secret"), []byte(pluginSecret), 0o600)
	os.Chmod(filepath.Join(dir, "plugin.secret"), 0o644)
	writeConfig(t, dir, "apnsEndpoint: dry-run\nlistenAddr: 0.0.0.0\npluginSecretFile: plugin.secret\n")
	out, err = run(dir)
	if err == nil || !strings.Contains(out, "0640 root:xapsd") {
		t.Errorf("world-readable secret: err %v, output:\n%s", err, out)
	}

	dir = testutil.TempDir(t)
	addr := writeConfig(t, dir, "apnsEndpoint: dry-run\nlistenAddr: 0.0.0.0\nallowUnauthenticated: true\nloglevel: info\n")
	addr = strings.Replace(addr, "0.0.0.0", "127.0.0.1", 1)
	d := startDaemon(t, dir, addr)
	if !d.waitLog("without a secret (allowUnauthenticated: true)", 5*time.Second) {
		t.Error("no warning for an unauthenticated listener beyond loopback")
	}
	d.stop()
}
