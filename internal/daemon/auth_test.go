package daemon_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/xapsdtest"
)

func postAuth(t *testing.T, addr, path, body, secret string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+path, strings.NewReader(body))
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	resp, err := xapsdtest.Client.Do(req)
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
	d := xapsdtest.Start(t, dir, xapsdtest.Options{})
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
	d.Stop()
}
