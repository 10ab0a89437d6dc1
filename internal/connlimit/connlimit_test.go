package connlimit

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

type server struct {
	pool    *Pool
	addr    string
	release chan struct{} // closes to let /slow finish
	evicted atomic.Int64
	skew    atomic.Int64 // added to the pool's clock
}

func start(t *testing.T, max int) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{pool: New(max), addr: ln.Addr().String(), release: make(chan struct{})}
	s.pool.OnEvict = func() { s.evicted.Add(1) }
	s.pool.now = func() time.Time { return time.Now().Add(time.Duration(s.skew.Load())) }
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				<-s.release
			}
			io.WriteString(w, "ok")
		}),
		ConnState:   s.pool.ConnState,
		IdleTimeout: time.Hour,
	}
	go srv.Serve(s.pool.Listener(ln))
	t.Cleanup(func() { srv.Close() })
	return s
}

// rawConn is a keep-alive HTTP/1.1 client on one connection.
type rawConn struct {
	net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{Conn: c, r: bufio.NewReader(c)}
}

// get sends one request and reads the answer; an error means the server
// closed the connection.
func (c *rawConn) get(path string) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
		return err
	}
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return nil
}

func waitOpen(t *testing.T, p *Pool, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for p.Open() != want {
		if time.Now().After(deadline) {
			t.Fatalf("pool holds %d connections, want %d", p.Open(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// At the cap, a new client is served by closing the longest-idle
// keep-alive connection, not refused or left waiting.
func TestIdleConnectionsMakeRoom(t *testing.T) {
	s := start(t, 3)
	var conns []*rawConn
	for range 3 {
		c := dial(t, s.addr)
		if err := c.get("/"); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	time.Sleep(10 * time.Millisecond)
	for i := range 5 {
		if err := dial(t, s.addr).get("/"); err != nil {
			t.Fatalf("new client %d at the cap: %v", i, err)
		}
	}
	if s.pool.Open() > 3 {
		t.Errorf("%d connections open, cap 3", s.pool.Open())
	}
	if s.evicted.Load() == 0 {
		t.Error("no connection was closed to make room")
	}
	// The first (longest idle) went first.
	if err := conns[0].get("/"); err == nil {
		t.Error("the longest-idle connection still works; another one was closed first")
	}
}

// Connections that connect and say nothing count as idle after Grace.
func TestSilentConnectionsMakeRoomAfterGrace(t *testing.T) {
	s := start(t, 2)
	dial(t, s.addr)
	dial(t, s.addr)
	waitOpen(t, s.pool, 2)
	s.skew.Store(int64(Grace))
	if err := dial(t, s.addr).get("/"); err != nil {
		t.Fatalf("new client behind silent connections: %v", err)
	}
}

// When every connection is busy, a new one waits for a slot instead of
// pushing the total over the cap.
func TestBusyConnectionsAreNotClosed(t *testing.T) {
	s := start(t, 2)
	done := make(chan error, 2)
	for range 2 {
		c := dial(t, s.addr)
		go func() { done <- c.get("/slow") }()
	}
	waitOpen(t, s.pool, 2)
	time.Sleep(20 * time.Millisecond) // both requests running
	third := make(chan error, 1)
	go func() { third <- dial(t, s.addr).get("/") }()
	select {
	case err := <-third:
		t.Fatalf("a third connection was served while two requests ran at cap 2 (%v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(s.release)
	for range 2 {
		if err := <-done; err != nil {
			t.Errorf("a busy request was cut: %v", err)
		}
	}
	if err := <-third; err != nil {
		t.Errorf("the waiting connection: %v", err)
	}
}

func TestClosedListenerStopsWaiting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := New(1)
	l := p.Listener(ln)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	first, err := l.Accept() // now at the cap, and not on any idle list once active
	if err != nil {
		t.Fatal(err)
	}
	p.ConnState(first, http.StateActive)
	errc := make(chan error, 1)
	go func() { _, err := l.Accept(); errc <- err }()
	time.Sleep(20 * time.Millisecond)
	l.Close()
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "closed") {
			t.Errorf("Accept after Close = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still waits after Close")
	}
	first.Close()
}
