package apns

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/url"
	"time"

	"github.com/sideshow/apns2"
	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/logging"
)

// Transport sends one notification. *apns2.Client satisfies it; so does
// the dry-run transport.
type Transport interface {
	PushWithContext(ctx apns2.Context, n *apns2.Notification) (*apns2.Response, error)
}

// Client is one set of push credentials bound to an endpoint. The sender
// holds the current Client and swaps it on reload.
type Client struct {
	Topic     string
	Transport Transport
	DryRun    bool

	pool  *connPool // nil for dry-run and test transports
	token *Token    // token mode only
	host  string    // host[:port] of the endpoint, for Reach
}

// CloseIdle closes the client's connections that carry no push. Retired
// credentials need it: the health-check PINGs would otherwise keep their
// connection to Apple open for as long as the daemon runs.
func (c *Client) CloseIdle() {
	if t, ok := c.Transport.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
}

// Token is the client's provider token, nil with a certificate.
func (c *Client) Token() *Token { return c.token }

// holdBack fails the pushes waiting for a connection or a stream with
// errHeldBack: sending has paused, and they would only be refused.
func (c *Client) holdBack() {
	if c.pool != nil {
		c.pool.holdBack()
	}
}

// unreachable says until when the client will not try to connect to
// APNs after failing to, and why; zero when it may.
func (c *Client) unreachable() (time.Time, error) {
	if c.pool == nil {
		return time.Time{}, nil
	}
	return c.pool.blockedUntil()
}

// Reachability is what is known of the way to APNs (Client.Reach).
type Reachability struct {
	State string        // one of the Reach words
	Took  time.Duration // ReachReachable: how long connecting took
	Err   error         // ReachUnreachable: why
	Until time.Time     // ReachUnreachable: the pushes' next attempt to connect, if one is set
}

// States of Reachability.
const (
	ReachConnected   = "connected"   // a connection to APNs is open
	ReachReachable   = "reachable"   // none was open; one could be made just now
	ReachUnreachable = "unreachable" // none can be made
	ReachDryRun      = "dry-run"     // nothing is sent to APNs
	ReachUnknown     = "unknown"     // a transport that does not say (tests)
)

// Reach says whether APNs can be reached with this client's credential:
// a connection open for the pushes counts; otherwise it connects once
// (TCP, TLS with the credential's certificate, HTTP/2 agreed) and closes
// the connection again. For xapsd diagnose; the pushes never wait for it.
func (c *Client) Reach(ctx context.Context) Reachability {
	switch {
	case c.DryRun:
		return Reachability{State: ReachDryRun}
	case c.pool == nil:
		return Reachability{State: ReachUnknown}
	case c.pool.open() > 0:
		return Reachability{State: ReachConnected}
	}
	if until, err := c.pool.blockedUntil(); !until.IsZero() {
		return Reachability{State: ReachUnreachable, Err: err, Until: until}
	}
	start := time.Now()
	cc, err := c.pool.connect(ctx, c.host)
	if err != nil {
		return Reachability{State: ReachUnreachable, Err: err}
	}
	cc.Close()
	return Reachability{State: ReachReachable, Took: time.Since(start)}
}

// endpointHost is the host[:port] of an endpoint URL.
func endpointHost(endpoint string) string {
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		return u.Host
	}
	return endpoint
}

// Endpoint hosts.
const (
	Production  = apns2.HostProduction
	Development = apns2.HostDevelopment
)

// ClientOptions configures the HTTP/2 connection to APNs.
type ClientOptions struct {
	// URL is Production, Development or a test server's https URL.
	URL string
	// Roots overrides the trusted CAs; nil means the system pool, which
	// honours SSL_CERT_FILE and SSL_CERT_DIR.
	Roots *x509.CertPool
	// ReadIdleTimeout (default 15 s) is the silence after which a PING
	// checks the connection; PingTimeout (10 s) how long its answer may
	// take before the connection counts as dead; IdleTimeout (15 min) how
	// long a connection without pushes stays open.
	ReadIdleTimeout, PingTimeout, IdleTimeout time.Duration
	// OnConnect, when set, sees every attempt to connect to APNs: nil
	// for a connection made, else why it failed.
	OnConnect func(error)
	// Connections caps the connections to APNs (default 1). Another
	// opens only while every one carries as many pushes as APNs allows
	// on it (1000 today), so it only matters with apnsConcurrency above
	// that: ConnectionsFor gives the number that fits.
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

// newHTTPClient is apns2's HTTP client on a connPool. No
// http.Client.Timeout: every push carries a context deadline from the
// sender (Sender.attempt), and a second deadline per request only cost a
// timer and a context.
func newHTTPClient(o ClientOptions, certs []tls.Certificate) (*http.Client, *connPool) {
	p := newConnPool(o, certs)
	return &http.Client{Transport: p}, p
}

// NewCertificateClient pushes with a client certificate (PEM or PKCS#12).
func NewCertificateClient(cert tls.Certificate, topic string, o ClientOptions) *Client {
	hc, pool := newHTTPClient(o, []tls.Certificate{cert})
	c := &apns2.Client{Certificate: cert, Host: o.URL, HTTPClient: hc}
	return &Client{Topic: topic, Transport: c, pool: pool, host: endpointHost(o.URL)}
}

// NewTokenClient pushes with a .p8 signing key (JWT bearer tokens). Pass
// the Token of the client this one replaces when it signs with the same
// key (Token.Same), so that a reload does not count as a token update at
// Apple.
func NewTokenClient(tok *Token, topic string, o ClientOptions) *Client {
	hc, pool := newHTTPClient(o, nil)
	c := &apns2.Client{Token: tok.tok, Host: o.URL, HTTPClient: hc}
	return &Client{Topic: topic, Transport: c, pool: pool, token: tok, host: endpointHost(o.URL)}
}

// NewDryRunClient logs each push instead of sending it: for trying xapsd
// without Apple credentials.
func NewDryRunClient(topic string, log logrus.FieldLogger) *Client {
	return &Client{Topic: topic, Transport: dryRun{log: log}, DryRun: true}
}

type dryRun struct{ log logrus.FieldLogger }

func (d dryRun) PushWithContext(_ apns2.Context, n *apns2.Notification) (*apns2.Response, error) {
	d.log.WithFields(logrus.Fields{
		"token":   logging.Mask(d.log, n.DeviceToken),
		"topic":   n.Topic,
		"payload": string(maskPayload(d.log, n.Payload.([]byte))),
	}).Info("dry-run: would push")
	return &apns2.Response{StatusCode: http.StatusOK}, nil
}

func maskPayload(l logrus.FieldLogger, p []byte) []byte {
	if logging.Verbose(l) {
		return p
	}
	return []byte(`{"aps":{"account-id":"…"}}`)
}
