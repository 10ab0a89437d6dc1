package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
)

// A client trickling a request body used to hold SIGTERM for the whole
// shutdownTimeout, leaving the pushes no time at all. Draining HTTP and
// sending pushes now have budgets of their own.
func TestShutdownGivesPushesTheirOwnBudget(t *testing.T) {
	// Delayed pushes wait a minute, so the one queued below goes out only
	// in the shutdown; Apple answers after 300 ms.
	e := newAPNsEnv(t, "delay: 60\ncheckInterval: 60\nshutdownDrainTimeout: 1s\nshutdownTimeout: 4s\n")
	e.apns.SetResponder(func(fakeapns.Request) fakeapns.Response { return fakeapns.Response{Delay: 300 * time.Millisecond} })
	e.register(t, "alice@example.com", acc, token(1))
	if status, _ := post(t, e.addr, "/notify", notifyBody("alice@example.com", "INBOX", "FlagsSet")); status != 200 {
		t.Fatalf("notify: %d", status)
	}
	// A request whose body never finishes.
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /register HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
	stopTrickle := make(chan struct{})
	defer close(stopTrickle)
	trickling := make(chan struct{})
	go func() {
		for first := true; ; first = false {
			select {
			case <-stopTrickle:
				return
			case <-time.After(200 * time.Millisecond):
				if _, err := c.Write([]byte(" ")); err != nil {
					return
				}
				if first {
					close(trickling)
				}
			}
		}
	}()
	<-trickling // the body is on its way when the stop comes
	if code := e.d.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if _, err := e.apns.WaitRequests(1, time.Second); err != nil {
		t.Errorf("the delayed push was not sent during the shutdown: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "state", "pending-pushes.json")); err == nil {
		t.Error("the push was kept for the next start instead of being sent")
	}
}

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
