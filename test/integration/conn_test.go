package integration

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/noauth"
)

func writeScript(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o700); err != nil {
		t.Fatal(err)
	}
}

// Under a small file limit, a flood of idle keep-alive connections must
// not keep Dovecot's next request from being served, nor /readyz from
// answering: the daemon closes the longest-idle connections to make room,
// and the metrics listener has a budget of its own.
func TestIdleConnectionFloodUnderAFileLimit(t *testing.T) {
	if _, err := exec.LookPath("prlimit"); err != nil {
		t.Skip("SKIPPED: prlimit (util-linux) is not installed")
	}
	dir := testutil.TempDir(t)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", testutil.MustFreePort(t))
	addr := writeConfig(t, dir, "apnsEndpoint: dry-run\nloglevel: info\nmetricsListenAddr: "+metricsAddr+"\n")
	wrapper := filepath.Join(dir, "xapsd-limited")
	// 256 descriptors in all, as a tight LimitNOFILE= would give.
	writeScript(t, wrapper, "#!/bin/sh\nexec prlimit --nofile=256:256 "+xapsdBin+" \"$@\"\n")
	d := startDaemonBin(t, wrapper, dir, addr)

	const flood = 400
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := range flood {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		held = append(held, c)
		// One request each, then the connection stays open and idle,
		// as a keep-alive client leaves it.
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	}
	// Read the answers that came; connections beyond the budget may be
	// closed meanwhile, which is the point.
	for _, c := range held {
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		bufio.NewReader(c).ReadString('\n')
	}

	hc := &http.Client{Timeout: 10 * time.Second}
	for i := range 5 {
		resp, err := hc.Post("http://"+addr+"/register", "application/json",
			strings.NewReader(registerBody(fmt.Sprintf("user%d@example.com", i), acc, token(i))))
		if err != nil {
			t.Fatalf("register %d behind %d idle connections: %v", i, flood, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("register %d: status %d", i, resp.StatusCode)
		}
	}
	resp, err := hc.Get("http://" + metricsAddr + "/readyz")
	if err != nil {
		t.Fatalf("/readyz behind the flood: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/readyz = %d", resp.StatusCode)
	}
	if !d.waitLog("connection limit reached", 5*time.Second) {
		t.Error("no warning about the connection limit")
	}
}

// Clients without the plugin's secret cannot delay the plugin: under a
// small file limit, with more of them holding connections than the daemon
// has room for (announcing bodies they never send, saying nothing, sending
// their headers a byte at a time, and connecting again when closed), every
// request with the secret is answered within the plugin's timeout.
func TestUnauthenticatedClientsCannotHoldThePluginPort(t *testing.T) {
	if _, err := exec.LookPath("prlimit"); err != nil {
		t.Skip("SKIPPED: prlimit (util-linux) is not installed")
	}
	dir := testutil.TempDir(t)
	if err := os.WriteFile(filepath.Join(dir, "plugin.secret"), []byte(pluginSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := writeConfig(t, dir, "apnsEndpoint: dry-run\nloglevel: info\npluginSecretFile: plugin.secret\n")
	wrapper := filepath.Join(dir, "xapsd-limited")
	// 256 descriptors: room for 96 plugin connections.
	writeScript(t, wrapper, "#!/bin/sh\nexec prlimit --nofile=256:256 "+xapsdBin+" \"$@\"\n")
	d := startDaemonBin(t, wrapper, dir, addr)

	// Most announce a body they never send (which the daemon used to
	// wait for, 30 s, with the connection counted as busy); one in ten
	// says nothing, one in ten sends its headers a byte at a time.
	flood := noauth.Start(addr, noauth.Options{Clients: 150, Pause: 10 * time.Millisecond, Kind: func(i int) noauth.Kind {
		switch i % 10 {
		case 8:
			return noauth.Silent
		case 9:
			return noauth.SlowHeaders
		}
		return noauth.AnnouncedBody
	}})
	defer flood.Stop()
	if !d.waitLog("connection limit reached", 20*time.Second) {
		t.Fatal("the attackers never filled the connection budget: the test did not test anything")
	}
	hc := &http.Client{Timeout: 5 * time.Second} // the plugin's default timeout
	slowest := time.Duration(0)
	for i := range 20 {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/register",
			strings.NewReader(registerBody(fmt.Sprintf("user%d@example.com", i), acc, token(i))))
		req.Header.Set("Authorization", "Bearer "+pluginSecret)
		start := time.Now()
		resp, err := hc.Do(req)
		took := time.Since(start)
		if err != nil {
			t.Fatalf("register %d behind the unauthenticated clients: %v (after %v)", i, err, took)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("register %d: status %d", i, resp.StatusCode)
		}
		slowest = max(slowest, took)
		if i%2 == 0 {
			hc.CloseIdleConnections() // half of them on a new connection
		}
	}
	t.Logf("slowest of 20 registrations behind 150 unauthenticated clients: %v", slowest)
}
