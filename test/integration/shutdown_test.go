package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
)

// pending-pushes.json goes only once its pushes have had Apple's answer:
// a crash before that keeps them for the next start.
func TestLeftoverPushesSurviveACrash(t *testing.T) {
	e := newAPNsEnv(t, "")
	e.d.stop()
	pending := filepath.Join(e.dir, "state", "pending-pushes.json")
	k := registry.Key{User: "alice@example.com", AccountID: acc, DeviceToken: token(7)}
	data, _ := json.Marshal([]registry.Key{k})
	if err := os.WriteFile(pending, data, 0o600); err != nil {
		t.Fatal(err)
	}
	// Apple does not answer this time.
	e.apns.SetResponder(func(fakeapns.Request) fakeapns.Response { return fakeapns.Response{Delay: time.Minute} })
	d := startDaemon(t, e.dir, e.addr, e.caEnv)
	if _, err := e.apns.WaitRequests(1, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	d.kill()
	if _, err := os.Stat(pending); err != nil {
		t.Fatalf("the left-over pushes were lost to a crash before Apple answered: %v", err)
	}
	e.apns.SetResponder(nil)
	d = startDaemon(t, e.dir, e.addr, e.caEnv)
	if _, err := e.apns.WaitRequests(2, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if !testutil.Wait(10*time.Second, func() bool { _, err := os.Stat(pending); return os.IsNotExist(err) }) {
		t.Fatal("pending-pushes.json still there after its push was delivered")
	}
	d.stop()
}
