package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// Pool is the HTTP/2 transport of one credential: one connection to
// APNs (a few under a load one cannot carry), used the way Apple asks.
//
// x/net's own pool opens another connection whenever a connection has as
// many streams open as the server allows, and assumes 100 before the
// server has said; APNs allows a token connection one stream until a
// request on it has been authenticated, so a burst opened dozens of
// connections, and nothing closed them. Here:
//
//   - there is one connection; another (up to Options.Connections)
//     opens only while every one is proven and carries as many pushes as
//     the server allows with pushes waiting, and still does growAfter
//     later; pushes beyond wait, oldest first, for a stream, and take
//     the oldest connection with room, so that under a lighter load the
//     newer ones fall idle and close after Options.ExtraIdleTimeout;
//   - a new connection carries one push at a time until APNs has answered
//     one with 200, and again after a 403, then as many as the server
//     advertises;
//   - the last connection idle for IdleTimeout is closed, and so are dead ones
//     (PINGs unanswered, GOAWAY, a reset); the next push dials again;
//   - when connecting fails (refused, reset, no TLS) the pool does not
//     dial again before a growing, jittered delay, and answers pushes at
//     once with an *UnreachableError meanwhile, which the sender takes as
//     "hold the queue", not as a failed attempt. A connection that dies
//     before its first answer counts as a failure to connect. While a
//     connection is open, a failed attempt at another only delays the
//     next the same way: the pushes wait for streams on the open ones;
//   - whatever the reason, dials come one at a time and at least
//     minDialGap apart.
type Pool struct {
	tls  *tls.Config
	opts Options

	mu       sync.Mutex
	conns    []*poolConn // live connections, oldest first
	dialing  bool
	waiting  []*waiter // pushes waiting for a slot or a connection, oldest first
	lastDial time.Time
	heldBack int       // counts HoldBack calls
	failures int       // connection failures in a row
	lastErr  error     // the latest of them
	retryAt  time.Time // no dial before this after a failure
	blocked  atomic.Int64
	sweeping bool // a look for idle extra connections is scheduled
}

// New makes the pool of a credential with its client certificates (none
// in token mode). It connects at the first request.
func New(o Options, certs []tls.Certificate) *Pool {
	if o.ReadIdleTimeout <= 0 {
		o.ReadIdleTimeout = defaultReadIdleTimeout
	}
	if o.PingTimeout <= 0 {
		o.PingTimeout = defaultPingTimeout
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = defaultIdleTimeout
	}
	o.Connections = max(o.Connections, 1)
	return &Pool{
		opts: o,
		tls:  &tls.Config{Certificates: certs, RootCAs: o.Roots, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}},
	}
}

// Open counts the pool's live connections: a connection that has closed
// itself (idle, an unanswered PING, a GOAWAY) stays in conns until a push
// fails on it, so it is not counted.
func (p *Pool) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, pc := range p.conns {
		if st := pc.cc.State(); !st.Closed && !st.Closing {
			n++
		}
	}
	return n
}

// BlockedUntil is the time before which the pool will not connect while
// it has no connection, or zero. The sender reads it for every push, so
// it is an atomic.
func (p *Pool) BlockedUntil() (time.Time, error) {
	n := p.blocked.Load()
	if n == 0 {
		return time.Time{}, nil
	}
	until := time.Unix(0, n)
	if !time.Now().Before(until) {
		return time.Time{}, nil
	}
	p.mu.Lock()
	err := p.lastErr
	p.mu.Unlock()
	return until, err
}

// Push sends r on a connection of the pool and returns the answer. A
// request that a connection did not process (it closed, went away or
// refused the stream) is sent again at once on another.
func (p *Pool) Push(ctx context.Context, r *Request) (*Response, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	for try := 0; ; try++ {
		pc, err := p.acquire(ctx, r.Authority)
		if err != nil {
			return nil, err
		}
		resp, err := pc.cc.do(ctx, r)
		if err == nil {
			p.answered(pc, resp.Status)
			p.release(pc)
			return resp, nil
		}
		again := p.failed(pc, err)
		p.release(pc)
		if !again || try >= retriesOnNewConn || ctx.Err() != nil {
			return nil, err
		}
	}
}

// RoundTrip is Push for an http.Request (http.RoundTripper): what a
// client built on net/http (apns2's, in tests) sends over the pool.
func (p *Pool) RoundTrip(req *http.Request) (*http.Response, error) {
	r, err := requestFrom(req)
	if err != nil {
		return nil, err
	}
	resp, err := p.Push(req.Context(), r)
	if err != nil {
		return nil, err
	}
	return resp.httpResponse(req), nil
}

// HoldBack fails the requests waiting for a connection or a stream with
// ErrHeldBack: the sender has paused, and they would only be refused.
func (p *Pool) HoldBack() {
	p.mu.Lock()
	p.heldBack++
	p.notifyLocked()
	p.mu.Unlock()
}

// acquire returns a connection with a slot taken on it, dialing one if
// there is none, or another if every one is full and the pool may grow.
// Pushes that find no slot queue up and are handed one as it frees,
// oldest first; a newcomer does not overtake them.
func (p *Pool) acquire(ctx context.Context, host string) (*poolConn, error) {
	p.mu.Lock()
	heldBack := p.heldBack
	woken := false // by a change, not handed a slot: may take one even with others waiting
	for {
		if p.heldBack != heldBack {
			p.mu.Unlock()
			return nil, ErrHeldBack
		}
		if pc := p.roomLocked(); pc != nil && (woken || len(p.waiting) == 0) {
			pc.take()
			p.passLocked()
			p.mu.Unlock()
			return pc, nil
		}
		if !p.dialing && p.mayGrowLocked() {
			if time.Now().Before(p.retryAt) {
				if len(p.conns) == 0 {
					err := &UnreachableError{Err: p.lastErr, Until: p.retryAt}
					p.mu.Unlock()
					return nil, err
				}
				// Connected, but another connection failed: wait for a
				// stream on the ones there are.
			} else {
				p.dialing = true
				go p.dial(host)
			}
		}
		w := &waiter{ch: make(chan struct{}, 1)}
		p.waiting = append(p.waiting, w)
		p.mu.Unlock()
		select {
		case <-w.ch:
		case <-ctx.Done():
		}
		p.mu.Lock()
		if w.pc != nil {
			if ctx.Err() == nil {
				p.mu.Unlock()
				return w.pc, nil
			}
			p.releaseLocked(w.pc) // handed a slot it will not use
		}
		if err := ctx.Err(); err != nil {
			w.gone = true
			p.mu.Unlock()
			return nil, err
		}
		woken = true
	}
}

// roomLocked returns the oldest connection with a free slot, or nil.
func (p *Pool) roomLocked() *poolConn {
	for _, pc := range p.conns {
		if pc.proven && pc.active >= pc.streams {
			if pc.full++; pc.full%refreshEvery == 0 {
				pc.refreshLimit()
			}
		}
		if pc.active < pc.limit() {
			return pc
		}
	}
	return nil
}

// mayGrowLocked says whether a connection should be dialed: there is
// none, or every one is proven and full and the pool is below its size.
// An unproven connection carries one push until it is, and a second
// connection would be no different.
func (p *Pool) mayGrowLocked() bool {
	if len(p.conns) >= p.opts.Connections {
		return false
	}
	for _, pc := range p.conns {
		if !pc.proven || pc.active < pc.streams {
			return false
		}
	}
	return true
}

// stillFullLocked says whether a dial for another connection is still
// wanted when its turn comes: every connection full, pushes waiting.
func (p *Pool) stillFullLocked() bool {
	return len(p.conns) == 0 || (len(p.waiting) > 0 && p.mayGrowLocked())
}

// passLocked hands free slots to waiting pushes.
func (p *Pool) passLocked() {
	for len(p.waiting) > 0 {
		pc := p.roomLocked()
		if pc == nil {
			return
		}
		w := p.nextWaiterLocked()
		if w == nil {
			return
		}
		pc.take()
		w.pc = pc
		w.ch <- struct{}{}
	}
}

// nextWaiterLocked takes the oldest waiting push off the queue.
func (p *Pool) nextWaiterLocked() *waiter {
	for len(p.waiting) > 0 {
		w := p.waiting[0]
		p.waiting[0] = nil
		p.waiting = p.waiting[1:]
		if !w.gone {
			return w
		}
	}
	return nil
}

// notifyLocked lets every waiting push look again: a connection, its
// state or the breaker changed.
func (p *Pool) notifyLocked() {
	for _, w := range p.waiting {
		select {
		case w.ch <- struct{}{}:
		default:
		}
	}
	clear(p.waiting)
	p.waiting = p.waiting[:0]
}

func (p *Pool) release(pc *poolConn) {
	p.mu.Lock()
	p.releaseLocked(pc)
	p.mu.Unlock()
}

func (p *Pool) releaseLocked(pc *poolConn) {
	pc.active--
	if len(p.waiting) > 0 {
		p.passLocked()
	}
}

// dropLocked takes a connection that can carry no more pushes out of the
// pool. Without connections, and after a failure, the sender pauses.
func (p *Pool) dropLocked(pc *poolConn) {
	pc.dead = true
	for i, c := range p.conns {
		if c == pc {
			p.conns = append(p.conns[:i], p.conns[i+1:]...)
			break
		}
	}
	if len(p.conns) == 0 && time.Now().Before(p.retryAt) {
		p.blocked.Store(p.retryAt.UnixNano())
	}
}

// answered notes an answer from APNs on pc.
func (p *Pool) answered(pc *poolConn, status int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !pc.answered {
		pc.answered = true
		p.failures, p.retryAt = 0, time.Time{}
		p.blocked.Store(0)
	}
	switch status {
	case http.StatusOK:
		if !pc.proven {
			pc.proven = true
			pc.refreshLimit()
			p.notifyLocked()
		}
	case http.StatusForbidden:
		// APNs takes back a token connection's streams when it refuses
		// the token. A 403 refuses the credential, not the push, and
		// the sender holds the queue back on it: the pushes waiting for
		// a stream are failed with ErrHeldBack now rather than handed
		// this one, each to be refused in turn before the sender has
		// read the first answer.
		pc.proven = false
		p.heldBack++
		p.notifyLocked()
	}
}

// failed notes a request that got no answer and says whether it should
// be sent again at once on another connection: when its own connection
// can take no more requests (GOAWAY, closed, dead) or the server refused
// the stream. A push sent twice wakes the device twice, which costs
// nothing; one lost costs the user their mail.
func (p *Pool) failed(pc *poolConn, err error) bool {
	var se http2.StreamError
	refused := errors.As(err, &se) && se.Code == http2.ErrCodeRefusedStream
	if st := pc.cc.State(); !st.Closed && !st.Closing {
		return refused
	}
	var lost error
	p.mu.Lock()
	if !pc.dead {
		if !pc.answered {
			lost = fmt.Errorf("connection lost before APNs answered: %w", err)
			p.noteFailureLocked(lost)
		}
		p.dropLocked(pc)
		p.notifyLocked()
	}
	p.mu.Unlock()
	if lost != nil {
		p.observe(lost)
	}
	return true
}

// scheduleSweepLocked makes sure idle extra connections are looked for
// while there are any.
func (p *Pool) scheduleSweepLocked() {
	if !p.sweeping && len(p.conns) > 1 && p.opts.ExtraIdleTimeout > 0 {
		p.sweeping = true
		time.AfterFunc(p.opts.ExtraIdleTimeout, p.sweep)
	}
}

// sweep closes the connections that carried no push since the previous
// sweep, newest first, keeping one: the last goes after IdleTimeout, as
// before the pool grew.
func (p *Pool) sweep() {
	p.mu.Lock()
	p.sweeping = false
	var idle []*poolConn
	for i := len(p.conns) - 1; i >= 0; i-- {
		pc := p.conns[i]
		if len(p.conns) > 1 && pc.active == 0 && pc.used == pc.usedAtSweep {
			p.dropLocked(pc)
			idle = append(idle, pc)
		}
		pc.usedAtSweep = pc.used
	}
	p.scheduleSweepLocked()
	p.mu.Unlock()
	for _, pc := range idle {
		pc.cc.Close()
	}
}

// CloseIdleConnections closes the connections no push is on. Retired
// credentials need it: the health-check PINGs would otherwise keep their
// connection to Apple open for as long as the daemon runs.
func (p *Pool) CloseIdleConnections() {
	p.mu.Lock()
	var idle []*poolConn
	for _, pc := range append([]*poolConn(nil), p.conns...) {
		if pc.active == 0 {
			p.dropLocked(pc)
			idle = append(idle, pc)
		}
	}
	p.mu.Unlock()
	for _, pc := range idle {
		pc.cc.Close()
	}
}
