package daemon_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
)

// A client trickling a request body used to hold SIGTERM for the whole
// shutdownTimeout, leaving the pushes no time at all. Draining HTTP and
// sending pushes now have budgets of their own.
func TestShutdownGivesPushesTheirOwnBudget(t *testing.T) {
	// Delayed pushes wait a minute, so the one queued below goes out only
	// in the shutdown; Apple answers after 300 ms.
	e := newAPNsEnv(t, "delay: 60\ncheckInterval: 60\nshutdownDrainTimeout: 1s\nshutdownTimeout: 4s\n")
	e.APNs.SetResponder(func(fakeapns.Request) fakeapns.Response { return fakeapns.Response{Delay: 300 * time.Millisecond} })
	e.Register(t, "alice@example.com", acc, token(1))
	if status, _ := post(t, e.Addr, "/notify", notifyBody("alice@example.com", "INBOX", "FlagsSet")); status != 200 {
		t.Fatalf("notify: %d", status)
	}
	// A request whose body never finishes.
	c, err := net.Dial("tcp", e.Addr)
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
	if code := exitCode(e.d.Stop()); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if _, err := e.APNs.WaitRequests(1, time.Second); err != nil {
		t.Errorf("the delayed push was not sent during the shutdown: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.Dir, "state", "pending-pushes.json")); err == nil {
		t.Error("the push was kept for the next start instead of being sent")
	}
}
