// Package connlimit bounds the connections an HTTP server holds, so that
// a flood of idle, silent or half-open connections cannot use up the
// process's file descriptors and lock out the clients that matter.
//
// The server says which connections matter: Trust marks the connection of
// a request that proved who sent it (the plugin's shared secret, or any
// request where none is required). At the bound, a listener makes room
// for a connection it accepted: it closes the connection that has waited
// longest without being trusted and without a request in its handler (one
// that connected and said nothing, is still sending its headers, or only
// asked for something that needs no secret). While there are untrusted
// connections, no trusted one is closed: those not yet candidates become
// candidates (or trusted) within Grace. Only when every connection is
// trusted or busy is the trusted connection idle longest closed (a
// keep-alive connection between requests, which any HTTP client must
// expect to lose). A connection whose request is in its handler is never
// closed, nor one younger than Grace, nor one with bytes the server has
// not read yet (a request on its way to the handler, which closing would
// cut): a client that sends its request at once, as the plugin does,
// keeps its new connection even in a burst of others. When there is no
// candidate, Accept waits, leaving new connections in the kernel's
// backlog.
// A connection also has FirstRequestDeadline to bring its first request
// to the handler, or it is closed: whoever has not even sent its headers
// by then is not a client that matters. There is deliberately no
// per-address limit: the Dovecot plugin comes from the same loopback
// address as anything else on the host, and would be the first one locked
// out.
package connlimit

import (
	"container/list"
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// FirstRequestDeadline is how long a new connection has to bring its
// first request's headers (and, on the TLS listener, its handshake); a
// real client sends them at once.
const FirstRequestDeadline = 3 * time.Second

// Grace is how long a new connection is safe from being closed for room:
// time to send its first bytes (which then protect it until the server
// has read them).
const Grace = 250 * time.Millisecond

// Pool is the budget of connections shared by one or more listeners.
type Pool struct {
	max int
	// OnEvict, when set, is called (without locks held) for each
	// connection closed to make room.
	OnEvict func()

	mu        sync.Mutex
	cond      *sync.Cond
	open      int                // connections accepted or being accepted
	waiting   int                // Accepts waiting in admit for room
	conns     map[*conn]*tracked // accepted and not yet closed
	untrusted *list.List         // *conn not trusted, no request in the handler; longest waiting first
	idle      *list.List         // trusted *conn between requests, longest idle first
	deadline  time.Duration      // FirstRequestDeadline; tests shorten it
	grace     time.Duration      // Grace
	now       func() time.Time
}

type tracked struct {
	since    time.Time     // admitted
	elem     *list.Element // nil while on no list
	in       *list.List    // untrusted or idle: the list elem is on
	trusted  bool
	serving  int  // requests in the handler
	writing  bool // a handler returned; its answer goes out until StateIdle
	idle     bool // between requests (http.StateIdle)
	started  bool // a request reached the handler
	deadline *time.Timer
}

// New returns a pool of at most max connections.
func New(max int) *Pool {
	p := &Pool{max: max, conns: make(map[*conn]*tracked), untrusted: list.New(), idle: list.New(),
		deadline: FirstRequestDeadline, grace: Grace, now: time.Now}
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
// server that accepts from it must be set up with Configure.
func (p *Pool) Listener(ln net.Listener) net.Listener {
	return &listener{Listener: ln, p: p}
}

// Configure makes srv tell the pool about its connections: which are
// between requests (ConnState), which request came on which connection
// (ConnContext, for Trust), and which have a request in the handler
// (srv.Handler is wrapped).
func (p *Pool) Configure(srv *http.Server) {
	srv.ConnState = p.connState
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if pc := unwrap(c); pc != nil {
			ctx = context.WithValue(ctx, connKey{}, pc)
		}
		return ctx
	}
	next := srv.Handler
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := r.Context().Value(connKey{}).(*conn)
		if c != nil && c.p == p {
			p.update(c, func(t *tracked) { t.serving++; t.started = true })
			defer p.update(c, func(t *tracked) { t.serving--; t.writing = true })
		}
		next.ServeHTTP(w, r)
	})
}

type connKey struct{}

// Trust marks the connection r came on as one of a client that matters,
// for as long as it stays open. It does nothing for a request that did not
// come through a Configure'd server.
func Trust(r *http.Request) {
	if c, _ := r.Context().Value(connKey{}).(*conn); c != nil {
		c.p.update(c, func(t *tracked) { t.trusted = true })
	}
}

func unwrap(nc net.Conn) *conn {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	c, _ := nc.(*conn)
	return c
}

// connState keeps track of which connections are between requests; it is
// the http.Server's ConnState hook (Configure).
func (p *Pool) connState(nc net.Conn, state http.ConnState) {
	c := unwrap(nc)
	if c == nil {
		return
	}
	switch state {
	case http.StateIdle:
		p.update(c, func(t *tracked) { t.idle, t.writing = true, false })
	case http.StateActive:
		p.update(c, func(t *tracked) { t.idle = false })
	}
}

// update changes what the pool knows of c and puts it on the list it now
// belongs on.
func (p *Pool) update(c *conn, change func(*tracked)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.conns[c]
	if t == nil {
		return // closed meanwhile
	}
	change(t)
	var want *list.List
	switch {
	case t.serving > 0 || t.writing:
		// Busy: not a candidate.
	case !t.trusted:
		want = p.untrusted
	case t.idle:
		want = p.idle
	default:
		// Trusted and between the handler and StateIdle, or sending
		// its next request: busy too.
	}
	if t.in == want {
		return // keeps its place
	}
	p.unlist(t)
	if want != nil {
		t.elem, t.in = want.PushBack(c), want
		p.cond.Broadcast() // an Accept waiting for room may close it
	}
}

func (p *Pool) unlist(t *tracked) {
	if t.elem != nil {
		t.in.Remove(t.elem)
		t.elem, t.in = nil, nil
	}
}

// admit takes a slot for c, just accepted, making room or waiting as
// needed; c itself is no candidate. Room is made only for a connection
// that is there: made ahead, it would go to whichever came next, and the
// connection just accepted, still without its request, would be the
// candidate to close for it. It fails once l is closed.
func (p *Pool) admit(l *listener, c *conn) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.open >= p.max {
		if l.closed {
			return net.ErrClosed
		}
		victim, retry := p.victimLocked()
		if victim != nil {
			p.mu.Unlock()
			victim.Close()
			if p.OnEvict != nil {
				p.OnEvict()
			}
			p.mu.Lock()
			continue
		}
		// Wait for a connection to close or become a candidate; the ones
		// passed over for now are looked at again when retry says.
		var again *time.Timer
		if retry > 0 {
			again = time.AfterFunc(retry, func() {
				p.mu.Lock()
				p.cond.Broadcast()
				p.mu.Unlock()
			})
		}
		p.waiting++
		p.cond.Wait()
		p.waiting--
		if again != nil {
			again.Stop()
		}
	}
	if l.closed {
		return net.ErrClosed
	}
	p.open++
	p.trackLocked(c)
	return nil
}

// Candidates are looked at from the front of each list, at most maxLook
// of them per list; one with a request on its way is looked at again
// after recheck.
const (
	maxLook = 64
	recheck = 10 * time.Millisecond
)

// victimLocked picks the connection to close for room, and takes it off
// the lists so that no one else picks it too. Without one, retry says
// when one of those passed over may have become a candidate (0: only a
// change of some connection's state can make one).
func (p *Pool) victimLocked() (victim *conn, retry time.Duration) {
	now := p.now()
	soonest := func(d time.Duration) {
		if retry == 0 || d < retry {
			retry = d
		}
	}
	n := 0
	for e := p.untrusted.Front(); e != nil && n < maxLook; e, n = e.Next(), n+1 {
		c := e.Value.(*conn)
		if young := p.grace - now.Sub(p.conns[c].since); young > 0 {
			soonest(young)
			continue
		}
		if c.unread() {
			soonest(recheck)
			continue
		}
		p.unlist(p.conns[c])
		return c, 0
	}
	if p.untrusted.Len() > 0 {
		// Wait for them rather than close a trusted connection.
		soonest(recheck)
		return nil, retry
	}
	n = 0
	for e := p.idle.Front(); e != nil && n < maxLook; e, n = e.Next(), n+1 {
		c := e.Value.(*conn)
		if c.unread() {
			soonest(recheck)
			continue
		}
		p.unlist(p.conns[c])
		return c, 0
	}
	return nil, retry
}

func (p *Pool) trackLocked(c *conn) {
	t := &tracked{since: p.now()}
	t.elem, t.in = p.untrusted.PushBack(c), p.untrusted
	t.deadline = time.AfterFunc(p.deadline, func() {
		p.mu.Lock()
		late := p.conns[c] != nil && !t.started
		p.mu.Unlock()
		if late {
			c.Close()
		}
	})
	p.conns[c] = t
}

func (p *Pool) release(c *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.conns[c]
	if t == nil {
		return // never admitted
	}
	p.unlist(t)
	t.deadline.Stop()
	delete(p.conns, c)
	p.open--
	p.cond.Broadcast()
}

type listener struct {
	net.Listener
	p      *Pool
	closed bool // guarded by p.mu
}

// Accept waits for a connection and then for room for it: at the bound
// the pool holds one connection more than its budget, and the rest wait
// in the kernel's backlog.
func (l *listener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	c := &conn{Conn: nc, p: l.p}
	if sc, ok := nc.(syscall.Conn); ok {
		c.raw, _ = sc.SyscallConn()
	}
	if err := l.p.admit(l, c); err != nil {
		nc.Close()
		return nil, err
	}
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
	raw  syscall.RawConn // for unread; nil when the listener gives none
	once sync.Once
}

// unread reports whether the client sent bytes the server has not read
// yet: the kernel holds them in the socket's receive queue.
func (c *conn) unread() bool {
	if c.raw == nil {
		return false
	}
	n := 0
	c.raw.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	return n > 0
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.p.release(c) })
	return err
}
