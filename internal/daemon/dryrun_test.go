package daemon_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/xapsdtest"
)

// Dry-run pushes reach nobody; the metrics count them apart from
// delivered ones.
func TestDryRunPushesAreCountedAsDryRun(t *testing.T) {
	dir := testutil.TempDir(t)
	metrics := fmt.Sprintf("127.0.0.1:%d", testutil.MustFreePort(t))
	addr := writeConfig(t, dir, "apnsEndpoint: dry-run\nmetricsListenAddr: "+metrics+"\n")
	d := xapsdtest.Start(t, dir, xapsdtest.Options{})
	post(t, addr, "/register", registerBody("alice", acc, token(1)))
	post(t, addr, "/notify", notifyBody("alice", "INBOX", "MessageNew"))
	if !d.WaitLog("outcome=dry-run", 5*time.Second) {
		t.Fatal("no dry-run push logged")
	}
	_, m := get(t, "http://"+metrics+"/metrics")
	if !strings.Contains(m, `xapsd_apns_pushes_total{outcome="dry-run",reason="",status="200"} 1`) || strings.Contains(m, `outcome="delivered"`) {
		t.Errorf("metrics:\n%s", grepLines(m, "xapsd_apns_pushes_total"))
	}
}
