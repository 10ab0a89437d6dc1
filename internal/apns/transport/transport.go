// Package transport is the HTTP/2 connection to APNs of one credential:
// a small pool of connections (Pool) used the way Apple asks, and write
// coalescing under each of them, so that pushes in flight share their
// system calls.
//
// It knows nothing of devices, retries or pauses: it carries requests,
// says when APNs cannot be reached (*UnreachableError) and fails the
// requests waiting for a stream when the sender holds the queue back
// (ErrHeldBack). Package apns builds its clients on it.
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
	// Connections caps the connections (default 1, at most 4). Another
	// opens only while every one carries as many pushes as APNs allows
	// on it, so it only matters with more pushes in flight than that:
	// ConnectionsFor gives the number that fits.
	Connections int
}

// streamsPerConnection is what APNs allows on one connection today; it
// only sizes the pool, the server's own figure is what counts.
const streamsPerConnection = 1000

// maxConnections bounds the pool of one credential.
const maxConnections = 4

// ConnectionsFor is the number of connections that carry concurrency
// pushes at once at APNs' stream limit, from 1 to 4.
func ConnectionsFor(concurrency int) int {
	return min(max(1, (concurrency+streamsPerConnection-1)/streamsPerConnection), maxConnections)
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
