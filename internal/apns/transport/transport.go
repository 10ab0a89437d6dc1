// Package transport is the HTTP/2 connection to APNs of one credential:
// a small pool of connections (Pool) used the way Apple asks; each one an
// HTTP/2 client written for pushes alone (clientConn, h2conn.go, with
// its header encoder in hpack.go), over write coalescing, so that pushes
// in flight share their system calls.
//
// It knows nothing of devices, retries or pauses: it carries requests,
// says when APNs cannot be reached (*UnreachableError) and fails the
// requests waiting for a stream when the sender holds the queue back
// (ErrHeldBack), and on a 403, on which the sender always does. Package
// apns builds its clients on it.
package transport

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Options configures a Pool.
type Options struct {
	// Roots overrides the trusted CAs; nil means the system pool, which
	// honours SSL_CERT_FILE and SSL_CERT_DIR.
	Roots *x509.CertPool
	// ReadIdleTimeout (default 15 s) is the silence after which a PING
	// checks a connection; PingTimeout (10 s) how long its answer may
	// take before the connection counts as dead; IdleTimeout (15 min) how
	// long a connection without pushes stays open.
	ReadIdleTimeout, PingTimeout, IdleTimeout time.Duration
	// OnConnect, when set, sees every attempt to connect to APNs: nil
	// for a connection made, else why it failed.
	OnConnect func(error)
	// Connections caps the connections (at least 1). Another opens only
	// while every open one carries as many pushes as the server allows
	// on it, with pushes waiting for a stream, and still does after
	// growAfter: against APNs' 1000 streams that takes more pushes in
	// flight than apnsConcurrency allows by default, against a server
	// that allows fewer it spreads them over several connections.
	Connections int
	// ExtraIdleTimeout is how long a connection beyond the first may
	// carry no push before it is closed: they are looked at every
	// ExtraIdleTimeout, so one goes after one to two of them. Zero leaves
	// them to IdleTimeout, like the first.
	ExtraIdleTimeout time.Duration
}

// Connection timings; Options can change the first three.
const (
	defaultReadIdleTimeout = 15 * time.Second
	defaultPingTimeout     = 10 * time.Second
	defaultIdleTimeout     = 15 * time.Minute
	dialTimeout            = 20 * time.Second
	// minDialGap keeps a connection that dies after answering (so the
	// breaker does not count it) from being replaced in a tight loop.
	minDialGap = time.Second
	// growAfter is how long every connection must stay full with pushes
	// waiting before another is dialed: a burst that the open ones carry
	// away within a few round trips opens none.
	growAfter = 250 * time.Millisecond
	// Backoff between failed connection attempts.
	minDialBackoff = time.Second
	maxDialBackoff = 2 * time.Minute
	// retriesOnNewConn bounds how often one push is sent again at once
	// on another connection because its own ended (GOAWAY, a dead
	// connection) or refused the stream.
	retriesOnNewConn = 2
)

// UnreachableError says that the pool cannot connect to APNs now and
// will not try again before Until.
type UnreachableError struct {
	Err   error
	Until time.Time
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot connect to APNs (next attempt in %s): %v",
		time.Until(e.Until).Round(time.Second), e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// ErrHeldBack fails a push that waited for a connection or a stream when
// the sender held the queue back (Pool.HoldBack); it was not sent.
var ErrHeldBack = errors.New("push held back: sending paused")
