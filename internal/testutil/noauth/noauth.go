// Package noauth runs clients without the plugin's secret that try to
// hold connections to the plugin port for as long as it lets them, for
// the integration tests and the soak (cmd/xapsd-bench): the flood that a
// daemon's connection limit must not let delay the clients that have the
// secret.
//
// It does not import "testing", so cmd/xapsd-bench can use it too.
package noauth

import (
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Kind is how a client tries to hold its connection.
type Kind int

const (
	// AnnouncedBody sends a POST's headers with a Content-Length and
	// never the body.
	AnnouncedBody Kind = iota
	// Silent connects and says nothing.
	Silent
	// SlowHeaders sends a request's headers a byte every half second.
	SlowHeaders
)

// Options configure Start.
type Options struct {
	Clients int
	// Kind says what client i does.
	Kind func(i int) Kind
	// Pause is how long a client waits before it connects again after
	// the server closed its connection (or refused one).
	Pause time.Duration
}

// Flood is a running set of clients.
type Flood struct {
	addr  string
	stop  chan struct{}
	wg    sync.WaitGroup
	conns atomic.Int64
}

// Start starts the clients against addr; Stop ends them.
func Start(addr string, o Options) *Flood {
	f := &Flood{addr: addr, stop: make(chan struct{})}
	for i := range o.Clients {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.client(o.Kind(i), o.Pause)
		}()
	}
	return f
}

// Conns counts the connections the clients made.
func (f *Flood) Conns() int64 { return f.conns.Load() }

// Stop closes every connection and waits for the clients to end.
func (f *Flood) Stop() {
	close(f.stop)
	f.wg.Wait()
}

// client holds a connection as kind does until the server closes it, and
// connects again after pause, until Stop.
func (f *Flood) client(kind Kind, pause time.Duration) {
	for {
		if c, err := net.DialTimeout("tcp", f.addr, 2*time.Second); err == nil {
			f.conns.Add(1)
			f.hold(c, kind)
		}
		select {
		case <-f.stop:
			return
		case <-time.After(pause):
		}
	}
}

func (f *Flood) hold(c net.Conn, kind Kind) {
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-f.stop:
		case <-done:
		}
		c.Close()
	}()
	switch kind {
	case AnnouncedBody:
		fmt.Fprintf(c, "POST /register HTTP/1.1\r\nHost: %s\r\nContent-Length: 1000\r\n\r\n", f.addr)
	case SlowHeaders:
		go func() {
			for _, b := range []byte("POST /notify HTTP/1.1\r\nHost: x\r\nX-Slow: ") {
				if _, err := c.Write([]byte{b}); err != nil {
					return
				}
				select {
				case <-done:
					return
				case <-time.After(500 * time.Millisecond):
				}
			}
		}()
	}
	io.Copy(io.Discard, c) // until the server closes it
}
