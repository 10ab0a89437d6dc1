package transport

import (
	"context"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"time"

	"golang.org/x/net/http2"
)

// observe hands a connection attempt's result to Options.OnConnect.
func (p *Pool) observe(err error) {
	if p.opts.OnConnect != nil {
		p.opts.OnConnect(err)
	}
}

// noteFailureLocked counts a failed connection and sets when the next
// attempt may be made: the delay doubles from minDialBackoff up to
// maxDialBackoff, then a random point in its upper half is taken so that
// many daemons do not come back at once.
func (p *Pool) noteFailureLocked(err error) {
	p.failures++
	d := minDialBackoff
	for i := 1; i < p.failures && d < maxDialBackoff; i++ {
		d *= 2
	}
	d = min(d, maxDialBackoff)
	d = d/2 + rand.N(d/2+1)
	p.lastErr = err
	p.retryAt = time.Now().Add(d)
	if len(p.conns) == 0 {
		p.blocked.Store(p.retryAt.UnixNano())
	}
}

// dial connects and adds the result to the pool's connections. Another
// connection beside open ones is only dialed if they are still full with
// pushes waiting after growAfter.
func (p *Pool) dial(host string) {
	p.mu.Lock()
	wait := time.Until(p.lastDial.Add(minDialGap))
	if len(p.conns) > 0 {
		wait = max(wait, growAfter)
	}
	p.mu.Unlock()
	if wait > 0 {
		time.Sleep(wait)
	}
	p.mu.Lock()
	if !p.stillFullLocked() {
		p.dialing = false
		p.notifyLocked()
		p.mu.Unlock()
		return
	}
	p.lastDial = time.Now()
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	cc, err := p.connect(ctx, host)
	cancel()
	p.mu.Lock()
	p.dialing = false
	if err != nil {
		p.noteFailureLocked(err)
	} else {
		p.conns = append(p.conns, &poolConn{cc: cc, streams: 1})
		p.blocked.Store(0)
		p.scheduleSweepLocked()
	}
	p.notifyLocked()
	p.mu.Unlock()
	p.observe(err)
}

func (p *Pool) connect(ctx context.Context, host string) (*clientConn, error) {
	name, port, err := net.SplitHostPort(host)
	if err != nil {
		name, port = host, "443"
	}
	cfg := p.tls.Clone()
	cfg.ServerName = name
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: dialTimeout, KeepAlive: 15 * time.Second}, Config: cfg}
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(name, port))
	if err != nil {
		return nil, err
	}
	if proto := c.(*tls.Conn).ConnectionState().NegotiatedProtocol; proto != http2.NextProtoTLS {
		c.Close()
		return nil, fmt.Errorf("%s does not speak HTTP/2 (ALPN %q)", host, proto)
	}
	cc, err := newClientConn(newCoalescingConn(c, 0), connOptions{
		ReadIdleTimeout: p.opts.ReadIdleTimeout, PingTimeout: p.opts.PingTimeout, IdleTimeout: p.opts.IdleTimeout})
	if err != nil {
		c.Close()
		return nil, err
	}
	return cc, nil
}

// Probe connects once (TCP, TLS with the pool's certificates, HTTP/2
// agreed) and closes the connection again, and says how long connecting
// took: whether APNs can be reached, without touching the pool's
// connections or its delay after failures.
func (p *Pool) Probe(ctx context.Context, host string) (time.Duration, error) {
	start := time.Now()
	cc, err := p.connect(ctx, host)
	if err != nil {
		return 0, err
	}
	cc.Close()
	return time.Since(start), nil
}
