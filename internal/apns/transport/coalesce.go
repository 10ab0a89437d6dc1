package transport

import (
	"crypto/tls"
	"net"
	"sync"
	"time"
)

// coalescingConn lets the pushes in flight share their writes to Apple.
//
// Written straight to TLS, every push would cost at least one TLS record
// and one write system call (x/net's client, used before clientConn,
// made it two: headers and body; under load the TLS writes alone were
// 7 % of the daemon's CPU). Here Write only copies into a
// buffer and returns; one goroutine per connection writes whatever has
// gathered since its previous write. When pushes are rare a frame leaves
// at once (one goroutine hand-off later); when they are many, one system
// call carries the frames of all the pushes that arrived while the
// previous one was under way, the way the registry's group commit shares
// an fsync.
//
// A failed write is reported by the next Write, and the connection's
// reader sees the broken connection too, so the requests on it fail and
// the sender retries them.
type coalescingConn struct {
	net.Conn
	tls *tls.Conn // to close the socket under TLS; nil when Conn is not TLS

	// maxPending bounds the buffer: a writer waits while it is full.
	maxPending int

	mu      sync.Mutex
	ready   sync.Cond // the flusher waits here for data or close
	room    sync.Cond // writers wait here while the buffer is full
	pending []byte
	waiting bool  // the flusher is parked on ready
	closing bool  // Close was called: write what is left, then stop
	err     error // the first write error, or net.ErrClosed after Close
	done    chan struct{}
}

const defaultMaxPending = 256 << 10

// closeFlushTimeout bounds how long Close waits for buffered frames (a
// GOAWAY, a RST_STREAM) to leave before it closes the connection anyway;
// x/net's client gives a TLS close the same 250 ms.
const closeFlushTimeout = 250 * time.Millisecond

func newCoalescingConn(c net.Conn, maxPending int) *coalescingConn {
	if maxPending <= 0 {
		maxPending = defaultMaxPending
	}
	cc := &coalescingConn{Conn: c, maxPending: maxPending, done: make(chan struct{})}
	cc.tls, _ = c.(*tls.Conn)
	cc.ready.L = &cc.mu
	cc.room.L = &cc.mu
	go cc.flushLoop()
	return cc
}

func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && !c.closing && len(c.pending) > 0 && len(c.pending)+len(p) > c.maxPending {
		c.room.Wait()
	}
	if c.err != nil {
		return 0, c.err
	}
	if c.closing {
		return 0, net.ErrClosed
	}
	c.pending = append(c.pending, p...)
	if c.waiting {
		c.waiting = false
		c.ready.Signal()
	}
	return len(p), nil
}

func (c *coalescingConn) flushLoop() {
	defer close(c.done)
	var batch []byte
	for {
		c.mu.Lock()
		for len(c.pending) == 0 && c.err == nil && !c.closing {
			c.waiting = true
			c.ready.Wait()
		}
		if c.err != nil || len(c.pending) == 0 {
			c.mu.Unlock()
			return
		}
		batch, c.pending = c.pending, batch[:0]
		c.room.Broadcast()
		c.mu.Unlock()

		if _, err := c.Conn.Write(batch); err != nil {
			c.mu.Lock()
			if c.err == nil {
				c.err = err
			}
			c.room.Broadcast()
			c.mu.Unlock()
			// The requests whose frames were lost were told they were
			// written; closing the socket fails them now, through clientConn's
			// reader, instead of at the next health-check PING.
			c.closeSocket()
			return
		}
	}
}

// closeSocket closes the connection under TLS, skipping TLS's
// close_notify, which cannot be sent on a broken or stuck connection.
func (c *coalescingConn) closeSocket() {
	if c.tls != nil {
		c.tls.NetConn().Close()
	} else {
		c.Conn.Close()
	}
}

// Close writes what is buffered (for at most closeFlushTimeout) and
// closes the connection. A write still stuck then (the peer stopped
// reading) ends with it: tls.Conn.Close closes the socket at once when a
// write is in progress. When none is, TLS first sends its close_notify,
// which can wait 5 s on a peer that stopped reading, so Close cuts it
// short after closeFlushTimeout.
func (c *coalescingConn) Close() error {
	c.mu.Lock()
	c.closing = true
	c.ready.Signal()
	c.room.Broadcast()
	c.mu.Unlock()
	t := time.NewTimer(closeFlushTimeout)
	select {
	case <-c.done:
	case <-t.C:
	}
	t.Stop()
	force := time.AfterFunc(closeFlushTimeout, c.closeSocket)
	err := c.Conn.Close()
	force.Stop()
	<-c.done // the write in progress, if any, fails on the closed connection
	c.mu.Lock()
	if c.err == nil {
		c.err = net.ErrClosed
	}
	c.mu.Unlock()
	return err
}
