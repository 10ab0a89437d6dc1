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
	dir := t.TempDir()
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
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
