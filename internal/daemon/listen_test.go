package daemon

import (
	"bytes"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/config"
)

func testLogger() (*logrus.Logger, *bytes.Buffer) {
	var b bytes.Buffer
	l := logrus.New()
	l.SetOutput(&b)
	return l, &b
}

// freeOnBothLoopbacks finds a port free on 127.0.0.1 and on ::1.
func freeOnBothLoopbacks(t *testing.T) int {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln6, err := net.Listen("tcp", net.JoinHostPort("::1", strconv.Itoa(port)))
		ln.Close()
		if err == nil {
			ln6.Close()
			return port
		}
	}
	t.Fatal("no port free on both loopbacks")
	return 0
}

func addrs(lns []net.Listener) []string {
	var out []string
	for _, ln := range lns {
		out = append(out, ln.Addr().String())
	}
	return out
}

// The default listens on both loopbacks, so a plugin URL with 127.0.0.1,
// [::1] or localhost reaches it.
func TestListenDefaultIsBothLoopbacks(t *testing.T) {
	cfg := config.Default()
	cfg.Port = freeOnBothLoopbacks(t)
	log, _ := testLogger()
	lns, err := listenPlugin(cfg, log, net.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	p := strconv.Itoa(cfg.Port)
	if got, want := addrs(lns), []string{"127.0.0.1:" + p, "[::1]:" + p}; !slices.Equal(got, want) {
		t.Fatalf("listening on %v, want %v", got, want)
	}
	for _, a := range []string{"127.0.0.1:" + p, "[::1]:" + p, "localhost:" + p} {
		c, err := net.Dial("tcp", a)
		if err != nil {
			t.Errorf("dial %s: %v", a, err)
			continue
		}
		c.Close()
	}
}

// failOn binds a free loopback port for each address, except for the
// addresses in fail, which fail with that error as the kernel's would.
func failOn(fail map[string]syscall.Errno) func(string, string) (net.Listener, error) {
	return func(network, addr string) (net.Listener, error) {
		if errno, ok := fail[addr]; ok {
			return nil, &net.OpError{Op: "listen", Net: network, Err: os.NewSyscallError("bind", errno)}
		}
		return net.Listen(network, "127.0.0.1:0")
	}
}

func TestListenLeavesOutAMissingLoopback(t *testing.T) {
	cfg := config.Default()
	cfg.Port = 11619
	for _, tc := range []struct {
		name    string
		hosts   string
		fail    map[string]syscall.Errno
		want    int    // listeners bound; 0: the start fails
		wantLog string // in the warning, or in the error when want is 0
	}{
		{"IPv6 turned off", config.DefaultListenAddr, map[string]syscall.Errno{"[::1]:11619": syscall.EADDRNOTAVAIL}, 1, "[::1]:11619"},
		{"no IPv6 at all", config.DefaultListenAddr, map[string]syscall.Errno{"[::1]:11619": syscall.EAFNOSUPPORT}, 1, "[::1]:11619"},
		{"no loopback at all", config.DefaultListenAddr, map[string]syscall.Errno{"[::1]:11619": syscall.EADDRNOTAVAIL, "127.0.0.1:11619": syscall.EADDRNOTAVAIL}, 0, "no address to listen on"},
		{"the only address given", "::1", map[string]syscall.Errno{"[::1]:11619": syscall.EADDRNOTAVAIL}, 0, "[::1]:11619"},
		{"port taken", config.DefaultListenAddr, map[string]syscall.Errno{"[::1]:11619": syscall.EADDRINUSE}, 0, "listen on [::1]:11619 (listenAddr/port)"},
		{"a missing address that is not loopback", "127.0.0.1, 192.0.2.1", map[string]syscall.Errno{"192.0.2.1:11619": syscall.EADDRNOTAVAIL}, 0, "listen on 192.0.2.1:11619"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := *cfg
			c.ListenAddr = tc.hosts
			log, buf := testLogger()
			lns, err := listenPlugin(&c, log, failOn(tc.fail))
			for _, ln := range lns {
				ln.Close()
			}
			switch {
			case tc.want == 0 && err == nil:
				t.Fatalf("started with %d listeners", len(lns))
			case tc.want == 0 && !strings.Contains(err.Error(), tc.wantLog):
				t.Errorf("error %q lacks %q", err, tc.wantLog)
			case tc.want != 0 && err != nil:
				t.Fatal(err)
			case tc.want != 0 && (len(lns) != tc.want || !strings.Contains(buf.String(), "level=warning") || !strings.Contains(buf.String(), tc.wantLog)):
				t.Errorf("%d listeners, log %q", len(lns), buf.String())
			}
		})
	}
}
