package integration

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
)

const pluginSecret = "9c2b7d1e4f6a8c0e2b4d6f8a0c2e4b6d"

func postAuth(t *testing.T, addr, path, body, secret string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+path, strings.NewReader(body))
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// With pluginSecretFile the built daemon answers 401 to requests without
// the secret, and stores nothing for them.
func TestPluginSecretIsEnforced(t *testing.T) {
	dir := testutil.TempDir(t)
	if err := os.WriteFile(filepath.Join(dir, "plugin.secret"), []byte(pluginSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := writeConfig(t, dir, "apnsEndpoint: dry-run\npluginSecretFile: plugin.secret\n")
	d := startDaemon(t, dir, addr)
	if status := postAuth(t, addr, "/register", registerBody("mallory@example.com", acc, token(1)), ""); status != 401 {
		t.Errorf("register without the secret = %d, want 401", status)
	}
	if status := postAuth(t, addr, "/notify", notifyBody("alice@example.com", "INBOX", "MessageNew"), "not-the-secret"); status != 401 {
		t.Errorf("notify with a wrong secret = %d, want 401", status)
	}
	if status := postAuth(t, addr, "/register", registerBody("alice@example.com", acc, token(2)), pluginSecret); status != 200 {
		t.Errorf("register with the secret = %d, want 200", status)
	}
	if status := postAuth(t, addr, "/notify", notifyBody("mallory@example.com", "INBOX", "MessageNew"), pluginSecret); status != 404 {
		t.Errorf("notify for the refused user = %d, want 404 (nothing was stored)", status)
	}
	d.stop()
}

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
