package connlimit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
)

type server struct {
	pool    *Pool
	addr    string
	release chan struct{} // closes to let /slow finish
	slow    chan struct{} // a value for each /slow in the handler
	evicted atomic.Int64
}

func start(t *testing.T, max int) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{pool: New(max), addr: ln.Addr().String(), release: make(chan struct{}), slow: make(chan struct{}, 100)}
	s.pool.OnEvict = func() { s.evicted.Add(1) }
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/slow":
				s.slow <- struct{}{}
				<-s.release
			case "/trusted":
				Trust(r)
			}
			io.WriteString(w, "ok")
		}),
		IdleTimeout: time.Hour,
	}
	s.pool.Configure(srv)
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

// waitAnswered waits until the server is done with every request: a
// client has its answer a moment before the server calls the connection
// idle, and only then is it a candidate.
func waitAnswered(t *testing.T, p *Pool) {
	t.Helper()
	testutil.WaitFor(t, "every connection done with its requests", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, tr := range p.conns {
			if tr.serving > 0 || tr.writing {
				return false
			}
		}
		return true
	})
}

// waitWaiting waits until an Accept has looked for room, found none and
// waits: the moment it would have let a connection in.
func waitWaiting(t *testing.T, p *Pool) {
	t.Helper()
	testutil.WaitFor(t, "an Accept to wait for room", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.waiting > 0
	})
}

func waitOpen(t *testing.T, p *Pool, want int) {
	t.Helper()
	testutil.WaitFor(t, fmt.Sprintf("the pool to hold %d connections", want), func() bool { return p.Open() == want })
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
	waitAnswered(t, s.pool)
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

// Connections that connect and say nothing make room at once: nobody who
// matters holds a connection without a request.
func TestSilentConnectionsMakeRoom(t *testing.T) {
	s := start(t, 2)
	dial(t, s.addr)
	dial(t, s.addr)
	waitOpen(t, s.pool, 2)
	if err := dial(t, s.addr).get("/"); err != nil {
		t.Fatalf("new client behind silent connections: %v", err)
	}
}

// Connections that were never trusted are closed for room before any
// trusted one, whether they are silent, still sending their headers, or
// idle after a request that needed no trust; a trusted idle connection
// goes only when nothing else can.
func TestUntrustedConnectionsAreClosedFirst(t *testing.T) {
	s := start(t, 4)
	trusted := dial(t, s.addr)
	if err := trusted.get("/trusted"); err != nil {
		t.Fatal(err)
	}
	silent := dial(t, s.addr)
	slow := dial(t, s.addr)
	fmt.Fprintf(slow, "GET / HTTP/1.1\r\nHost:") // headers never finished
	idle := dial(t, s.addr)
	if err := idle.get("/"); err != nil {
		t.Fatal(err)
	}
	waitOpen(t, s.pool, 4)
	waitAnswered(t, s.pool)
	var fresh []*rawConn
	for i := range 3 {
		c := dial(t, s.addr)
		if err := c.get("/trusted"); err != nil {
			t.Fatalf("new client %d: %v", i, err)
		}
		fresh = append(fresh, c) // each new one is trusted, and stays open
		waitAnswered(t, s.pool)
	}
	if s.evicted.Load() != 3 {
		t.Errorf("%d connections closed for room, want the 3 untrusted ones", s.evicted.Load())
	}
	for name, c := range map[string]*rawConn{"silent": silent, "slow": slow} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Errorf("the %s connection is still open", name)
		}
	}
	if err := idle.get("/"); err == nil {
		t.Error("the untrusted idle connection still works")
	}
	if err := trusted.get("/"); err != nil {
		t.Errorf("the trusted connection was closed while untrusted ones could go: %v", err)
	}
	// Now only trusted connections are left: the longest idle goes (the
	// first new client's; the old one just made a request).
	waitAnswered(t, s.pool)
	if err := dial(t, s.addr).get("/trusted"); err != nil {
		t.Fatal(err)
	}
	if err := fresh[0].get("/"); err == nil {
		t.Error("the longest-idle trusted connection still works; another one was closed first")
	}
	if err := trusted.get("/"); err != nil {
		t.Errorf("a trusted connection idle for less time was closed: %v", err)
	}
}

// A connection that does not bring its first request within the deadline
// is closed, room needed or not; one that did stays.
func TestFirstRequestHasADeadline(t *testing.T) {
	s := start(t, 100)
	s.pool.mu.Lock()
	s.pool.deadline = 200 * time.Millisecond
	s.pool.mu.Unlock()
	served := dial(t, s.addr)
	if err := served.get("/"); err != nil {
		t.Fatal(err)
	}
	silent := dial(t, s.addr)
	slow := dial(t, s.addr)
	fmt.Fprintf(slow, "GET / HTTP/1.1\r\nHost:")
	for name, c := range map[string]*rawConn{"silent": silent, "slow": slow} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "timeout") {
			t.Errorf("the %s connection was not closed after the deadline: %v", name, err)
		}
	}
	if err := served.get("/"); err != nil {
		t.Errorf("a connection that brought its request in time was closed: %v", err)
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
	<-s.slow
	<-s.slow // both requests in the handler
	third := make(chan error, 1)
	go func() { third <- dial(t, s.addr).get("/") }()
	waitWaiting(t, s.pool)
	select {
	case err := <-third:
		t.Fatalf("a third connection was served while two requests ran at cap 2 (%v)", err)
	default:
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
	first, err := l.Accept() // now at the cap, and no candidate while it serves
	if err != nil {
		t.Fatal(err)
	}
	p.update(first.(*conn), func(t *tracked) { t.serving++ })
	second, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	errc := make(chan error, 1)
	go func() { _, err := l.Accept(); errc <- err }()
	waitWaiting(t, p)
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

// Trust finds the connection behind TLS and HTTP/2 too (the plugin API's
// TLS listener, for a pooling proxy).
func TestTrustOverTLSAndHTTP2(t *testing.T) {
	pool := New(10)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		Trust(r)
		io.WriteString(w, r.Proto)
	}))
	srv.EnableHTTP2 = true
	srv.Listener = pool.Listener(srv.Listener)
	pool.Configure(srv.Config)
	srv.StartTLS()
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	proto, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(proto) != "HTTP/2.0" {
		t.Fatalf("served over %s, want HTTP/2.0", proto)
	}
	pool.mu.Lock()
	defer pool.mu.Unlock()
	if len(pool.conns) != 1 {
		t.Fatalf("%d connections in the pool, want 1", len(pool.conns))
	}
	for _, tr := range pool.conns {
		if !tr.trusted {
			t.Error("the HTTP/2 connection of a trusted request is not trusted")
		}
	}
}

// A connection whose request is on its way (sent, not yet read by the
// server) is not closed for room: in a burst of connections, the plugin's
// new one, request sent at once, would otherwise be cut before the server
// got to it. Once the server has read what it sent, it is a candidate like
// any other.
func TestConnectionWithAnUnreadRequestIsNotClosed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := New(1)
	l := p.Listener(ln)
	defer l.Close()
	first, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	io.WriteString(first, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	held, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if !testutil.Wait(5*time.Second, held.(*conn).unread) {
		t.Fatal("the request never arrived")
	}
	second, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	waitWaiting(t, p)
	select {
	case <-accepted:
		t.Fatal("a second connection was let in by closing one whose request was not read yet")
	default:
	}
	held.Read(make([]byte, 4096)) // the server reads the request
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the second connection still waits after the first one's request was read")
	}
	first.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := first.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the first connection was not closed for room: %v", err)
	}
}
