package transport

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

// recordingConn is the connection under a coalescingConn: it keeps what
// was written, counts the writes and can hold them until released.
type recordingConn struct {
	net.Conn // nil: only Write and Close are used

	mu      sync.Mutex
	data    bytes.Buffer
	writes  []int // size of each write
	gate    chan struct{}
	entered chan struct{} // receives once per write that reaches the gate
	fail    error
	closed  bool
	gaveUp  bool
	arrived *sync.Cond
}

func newRecordingConn() *recordingConn {
	r := &recordingConn{entered: make(chan struct{}, 1000)}
	r.arrived = sync.NewCond(&r.mu)
	return r
}

func (r *recordingConn) Write(p []byte) (int, error) {
	r.mu.Lock()
	gate, fail := r.gate, r.fail
	r.mu.Unlock()
	if gate != nil {
		r.entered <- struct{}{}
		<-gate
	}
	if fail != nil {
		return 0, fail
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.data.Write(p)
	r.writes = append(r.writes, len(p))
	r.arrived.Broadcast()
	return len(p), nil
}

func (r *recordingConn) Close() error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	return nil
}

// hold makes writes wait until release; each reports on entered.
func (r *recordingConn) hold() {
	r.mu.Lock()
	r.gate = make(chan struct{})
	r.mu.Unlock()
}

func (r *recordingConn) release() {
	r.mu.Lock()
	gate := r.gate
	r.gate = nil
	r.mu.Unlock()
	close(gate)
}

// waitFor blocks until n bytes have been written, or fails the test.
func (r *recordingConn) waitFor(t *testing.T, n int) {
	t.Helper()
	timeout := time.AfterFunc(10*time.Second, func() {
		r.mu.Lock()
		r.gaveUp = true
		r.arrived.Broadcast()
		r.mu.Unlock()
	})
	defer timeout.Stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.data.Len() < n && !r.gaveUp {
		r.arrived.Wait()
	}
	if r.data.Len() < n {
		t.Fatalf("%d of %d bytes written within 10 s", r.data.Len(), n)
	}
}

func TestCoalescingConnKeepsEveryByteInOrder(t *testing.T) {
	under := newRecordingConn()
	c := newCoalescingConn(under, 4096)
	var want bytes.Buffer
	var wantMu sync.Mutex
	var wg sync.WaitGroup
	// Writers take turns the way x/net's write lock makes them; each
	// chunk must arrive whole and in the order Write was called.
	var order sync.Mutex
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				p := fmt.Appendf(nil, "<%d:%d:%s>", g, i, bytes.Repeat([]byte{'x'}, i%50))
				order.Lock()
				if _, err := c.Write(p); err != nil {
					t.Error(err)
				}
				wantMu.Lock()
				want.Write(p)
				wantMu.Unlock()
				order.Unlock()
			}
		}()
	}
	wg.Wait()
	under.waitFor(t, want.Len())
	under.mu.Lock()
	got := under.data.String()
	under.mu.Unlock()
	if got != want.String() {
		t.Fatalf("bytes differ: %d written, %d arrived", want.Len(), len(got))
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestCoalescingConnSharesOneWriteWhileTheLastIsUnderWay(t *testing.T) {
	under := newRecordingConn()
	under.hold()
	c := newCoalescingConn(under, 0)
	defer c.Close()

	c.Write([]byte("first"))
	<-under.entered // the flusher is now inside the first write
	for i := range 100 {
		// These return at once although the connection is busy.
		if _, err := c.Write(fmt.Appendf(nil, "[%02d]", i)); err != nil {
			t.Fatal(err)
		}
	}
	under.release()
	under.waitFor(t, len("first")+100*4)
	under.mu.Lock()
	defer under.mu.Unlock()
	if len(under.writes) != 2 || under.writes[1] != 400 {
		t.Fatalf("writes %v, want [5 400]: the 100 frames written during the first write should leave together", under.writes)
	}
}

func TestCoalescingConnBoundsItsBuffer(t *testing.T) {
	under := newRecordingConn()
	under.hold()
	c := newCoalescingConn(under, 64)
	defer c.Close()

	c.Write([]byte("a"))
	<-under.entered
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 40 {
			c.Write(bytes.Repeat([]byte{'b'}, 10)) // 400 bytes through a 64-byte buffer
		}
	}()
	// Writers must wait for room: with the first write held, at most
	// 64 bytes can be buffered, so the 40 writes cannot all finish.
	testutil.WaitFor(t, "a writer to wait for room", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.pending)+10 > c.maxPending
	})
	select {
	case <-done:
		t.Fatal("all writes returned while the connection was blocked")
	default:
	}
	under.release()
	<-done
	under.waitFor(t, 401)
	under.mu.Lock()
	defer under.mu.Unlock()
	for _, n := range under.writes {
		if n > 64 {
			t.Fatalf("a write of %d bytes: buffer above its 64-byte bound (writes %v)", n, under.writes)
		}
	}
}

func TestCoalescingConnReportsAWriteError(t *testing.T) {
	under := newRecordingConn()
	broken := errors.New("connection reset")
	under.fail = broken
	c := newCoalescingConn(under, 0)
	defer c.Close()
	c.Write([]byte("lost"))
	// The failure shows on a later Write.
	var err error
	if !testutil.Wait(testutil.Patience, func() bool { _, err = c.Write([]byte("x")); return errors.Is(err, broken) }) {
		t.Fatalf("Write kept returning %v, want the connection's error", err)
	}
}

func TestCoalescingConnCloseWritesWhatIsBuffered(t *testing.T) {
	under := newRecordingConn()
	under.hold()
	c := newCoalescingConn(under, 0)
	c.Write([]byte("headers"))
	<-under.entered
	c.Write([]byte("GOAWAY"))
	under.release()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	under.mu.Lock()
	got, closed := under.data.String(), under.closed
	under.mu.Unlock()
	if got != "headersGOAWAY" || !closed {
		t.Fatalf("after Close: wrote %q, closed %v", got, closed)
	}
	if _, err := c.Write([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
	}
}

// A peer that stops reading must not hold Close: x/net closes a dead
// connection from its reader and expects that to end every write.
func TestCoalescingConnCloseDoesNotWaitForAPeerThatStoppedReading(t *testing.T) {
	ca, leaf := serverPKI(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{leaf.TLSCertificate()}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.(*tls.Conn).Handshake() // then never reads again
		}
		accepted <- c
	}()
	tc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: ca.CertPool()})
	if err != nil {
		t.Fatal(err)
	}
	if srv := <-accepted; srv != nil {
		defer srv.Close()
	}
	c := newCoalescingConn(tc, 1<<20)
	// Fill the socket buffers until the flusher is stuck in a write.
	chunk := make([]byte, 64<<10)
	stuck := make(chan struct{})
	go func() {
		defer close(stuck)
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}()
	// The buffer is full once the flusher is stuck in its write: then
	// the writer waits for room.
	testutil.WaitFor(t, "the writer to block on the full buffer", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.pending)+len(chunk) > c.maxPending
	})
	start := time.Now()
	c.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %v with a peer that does not read", d)
	}
	select {
	case <-stuck:
	case <-time.After(5 * time.Second):
		t.Fatal("a writer waiting for room was not released by Close")
	}
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the flusher is still in its write after Close")
	}
}

// With no write in progress but the socket full (pushes went out to a
// peer that then stopped reading), TLS's close_notify would wait 5 s.
func TestCoalescingConnCloseDoesNotWaitForCloseNotify(t *testing.T) {
	ca, leaf := serverPKI(t)
	raw, srvRaw := tcpPair(t)
	accepted := make(chan net.Conn, 1)
	go func() {
		tc := tls.Server(srvRaw, &tls.Config{Certificates: []tls.Certificate{leaf.TLSCertificate()}})
		tc.Handshake() // then never reads again
		accepted <- tc
	}()
	raw.(*net.TCPConn).SetWriteBuffer(4096)
	tc := tls.Client(raw, &tls.Config{RootCAs: ca.CertPool(), ServerName: "127.0.0.1"})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if srv := <-accepted; srv != nil {
		defer srv.Close()
	}
	// Fill the socket under TLS until the kernel takes no more.
	junk := make([]byte, 1024)
	for {
		raw.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := raw.Write(junk); err != nil {
			break
		}
	}
	raw.SetWriteDeadline(time.Time{})
	c := newCoalescingConn(tc, 0)
	start := time.Now()
	c.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %v: it waited for TLS's close_notify on a peer that does not read", d)
	}
}

// A failed write closes the socket, so x/net's reader fails the requests
// whose frames were lost at once.
func TestCoalescingConnClosesTheSocketAfterAFailedWrite(t *testing.T) {
	under := newRecordingConn()
	under.fail = errors.New("broken pipe")
	c := newCoalescingConn(under, 0)
	c.Write([]byte("lost"))
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		t.Fatal("flusher still running after its write failed")
	}
	under.mu.Lock()
	closed := under.closed
	under.mu.Unlock()
	if !closed {
		t.Fatal("connection left open after a failed write")
	}
}

// serverPKI is a CA and a loopback server certificate it issued.
func serverPKI(t *testing.T) (*testpki.CA, *testpki.Leaf) {
	t.Helper()
	ca, err := testpki.NewCA("coalesce test CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := testpki.ServerCert(ca)
	if err != nil {
		t.Fatal(err)
	}
	return ca, leaf
}
