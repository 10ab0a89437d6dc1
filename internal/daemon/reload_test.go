package daemon_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/xapsdtest"
)

// SIGHUP applies what it can and names the changed settings that need a
// restart.
func TestSIGHUPNamesSettingsThatNeedARestart(t *testing.T) {
	dir := testutil.TempDir(t)
	addr := writeConfig(t, dir, "apnsEndpoint: dry-run\n")
	d := xapsdtest.Start(t, dir, xapsdtest.Options{})
	cfg := filepath.Join(dir, "xapsd.yaml")
	data := mustRead(t, cfg)
	data = regexp.MustCompile(`(?m)^port: .*$`).ReplaceAll(data, []byte(fmt.Sprintf("port: %d", testutil.MustFreePort(t))))
	data = regexp.MustCompile(`(?m)^delay: .*$`).ReplaceAll(data, []byte("delay: 45"))
	data = regexp.MustCompile(`(?m)^loglevel: .*$`).ReplaceAll(data, []byte("loglevel: info"))
	os.WriteFile(cfg, data, 0o600)
	d.Reload()
	if !d.WaitLog("credentials reloaded", 10*time.Second) {
		t.Fatal("no reload")
	}
	line := logLine(t, d.Log.String(), "only after a restart")
	if !strings.Contains(line, `keys="port, delay"`) {
		t.Errorf("reload line %q does not name exactly port and delay", line)
	}
	// Still listening where it started.
	if status, _ := post(t, addr, "/notify", notifyBody("nobody", "INBOX", "MessageNew")); status != 404 {
		t.Errorf("notify after reload: %d", status)
	}
}
