// Package connlimit bounds the connections an HTTP server holds, so that
// a flood of idle or half-open connections cannot use up the process's
// file descriptors and lock out the clients that matter.
//
// At the bound, a listener makes room before it accepts: it closes the
// connection that has been idle longest (a keep-alive connection between
// requests, which any HTTP client must expect to lose), or else one that
// connected more than Grace ago and has not sent a byte. Only when every
// connection is busy with a request, or new and still within Grace, does
// Accept wait, leaving new ones in
// the kernel's backlog. There is deliberately no per-address limit: the
// Dovecot plugin comes from the same loopback address as anything else
// on the host, and would be the first one locked out.
package connlimit

import (
	"container/list"
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"time"
)

// Grace is how long a new connection may stay silent before it counts as
// idle; a real client sends its request at once.
const Grace = 2 * time.Second

// Pool is the budget of connections shared by one or more listeners.
type Pool struct {
	max int
	// OnEvict, when set, is called (without locks held) for each
	// connection closed to make room.
	OnEvict func()

	mu    sync.Mutex
	cond  *sync.Cond
	open  int                // connections accepted or being accepted
	conns map[*conn]*tracked // accepted and not yet closed
	idle  *list.List         // *conn between requests, longest idle first
	fresh *list.List         // *conn that have not started a request, oldest first
	now   func() time.Time
}

type tracked struct {
	elem  *list.Element // nil while a request runs
	in    *list.List    // idle or fresh: the list elem is on
	since time.Time     // when it was accepted (for Grace, while on fresh)
}

// New returns a pool of at most max connections.
func New(max int) *Pool {
	p := &Pool{max: max, conns: make(map[*conn]*tracked), idle: list.New(), fresh: list.New(), now: time.Now}
	p.cond = sync.NewCond(&p.mu)
	return p
}

// Open reports how many connections the pool holds.
func (p *Pool) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open
}

// Listener wraps ln so that its connections count against the pool. The
// server must use p.ConnState as its ConnState hook.
func (p *Pool) Listener(ln net.Listener) net.Listener {
	return &listener{Listener: ln, p: p}
}

// ConnState keeps track of which connections are between requests; it is
// the http.Server's ConnState hook.
func (p *Pool) ConnState(nc net.Conn, state http.ConnState) {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	c, ok := nc.(*conn)
	if !ok {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.conns[c]
	if t == nil || state == http.StateNew {
		return // StateNew: on the fresh list since Accept
	}
	p.unlist(t)
	switch state {
	case http.StateIdle:
		t.elem, t.in = p.idle.PushBack(c), p.idle
		p.cond.Broadcast() // an Accept waiting for room may close it
	case http.StateActive:
		// Busy: not a candidate.
	}
}

func (p *Pool) unlist(t *tracked) {
	if t.elem != nil {
		t.in.Remove(t.elem)
		t.elem, t.in = nil, nil
	}
}

// reserve takes a slot for the next connection, making room or waiting
// as needed. It fails once l is closed.
func (p *Pool) reserve(l *listener) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.open >= p.max {
		if l.closed {
			return net.ErrClosed
		}
		if victim := p.victimLocked(); victim != nil {
			p.mu.Unlock()
			victim.Close()
			if p.OnEvict != nil {
				p.OnEvict()
			}
			p.mu.Lock()
			continue
		}
		// Wait for a connection to close or go idle, or for the oldest
		// silent one to use up its grace.
		var wake *time.Timer
		if f := p.fresh.Front(); f != nil {
			wait := Grace - p.now().Sub(p.conns[f.Value.(*conn)].since)
			wake = time.AfterFunc(max(wait, time.Millisecond), func() {
				p.mu.Lock()
				p.cond.Broadcast()
				p.mu.Unlock()
			})
		}
		p.cond.Wait()
		if wake != nil {
			wake.Stop()
		}
	}
	if l.closed {
		return net.ErrClosed
	}
	p.open++
	return nil
}

// victimLocked picks the connection to close for room, and takes it off
// the lists so that no one else picks it too.
func (p *Pool) victimLocked() *conn {
	var e *list.Element
	if e = p.idle.Front(); e == nil {
		if f := p.fresh.Front(); f != nil && p.now().Sub(p.conns[f.Value.(*conn)].since) >= Grace {
			e = f
		}
	}
	if e == nil {
		return nil
	}
	c := e.Value.(*conn)
	p.unlist(p.conns[c])
	return c
}

func (p *Pool) track(c *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t := &tracked{since: p.now()}
	t.elem, t.in = p.fresh.PushBack(c), p.fresh
	p.conns[c] = t
}

func (p *Pool) release(c *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c != nil {
		if t := p.conns[c]; t != nil {
			p.unlist(t)
			delete(p.conns, c)
		}
	}
	p.open--
	p.cond.Broadcast()
}

type listener struct {
	net.Listener
	p      *Pool
	closed bool // guarded by p.mu
}

func (l *listener) Accept() (net.Conn, error) {
	if err := l.p.reserve(l); err != nil {
		return nil, err
	}
	nc, err := l.Listener.Accept()
	if err != nil {
		l.p.release(nil)
		return nil, err
	}
	c := &conn{Conn: nc, p: l.p}
	l.p.track(c)
	return c, nil
}

func (l *listener) Close() error {
	l.p.mu.Lock()
	l.closed = true
	l.p.cond.Broadcast()
	l.p.mu.Unlock()
	return l.Listener.Close()
}

type conn struct {
	net.Conn
	p    *Pool
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.p.release(c) })
	return err
}
