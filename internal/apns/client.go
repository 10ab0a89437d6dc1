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

	"github.com/xapsd/xapsd/internal/apns/transport"
	"github.com/xapsd/xapsd/internal/logging"
)

// Transport sends one notification, with apns2.Client's signature: the
// pusher (the same requests as apns2.Client for less CPU), the dry-run
// transport, and tests' own.
type Transport interface {
	PushWithContext(ctx apns2.Context, n *apns2.Notification) (*apns2.Response, error)
}

// Client is one set of push credentials bound to an endpoint. The sender
// holds the current Client and swaps it on reload.
type Client struct {
	Topic     string
	Transport Transport
	DryRun    bool

	pool  *transport.Pool // nil for dry-run and test transports
	token *Token          // token mode only
	host  string          // host[:port] of the endpoint, for Reach
}

// CloseIdle closes the client's connections that carry no push. Retired
// credentials need it: the health-check PINGs would otherwise keep their
// connection to Apple open for as long as the daemon runs.
func (c *Client) CloseIdle() {
	if c.pool != nil {
		c.pool.CloseIdleConnections()
	}
}

// OpenConnections counts the client's connections to APNs.
func (c *Client) OpenConnections() int {
	if c.pool == nil {
		return 0
	}
	return c.pool.Open()
}

// Token is the client's provider token, nil with a certificate.
func (c *Client) Token() *Token { return c.token }

// holdBack fails the pushes waiting for a connection or a stream with
// transport.ErrHeldBack: sending has paused, and they would only be
// refused.
func (c *Client) holdBack() {
	if c.pool != nil {
		c.pool.HoldBack()
	}
}

// unreachable says until when the client will not try to connect to
// APNs after failing to, and why; zero when it may.
func (c *Client) unreachable() (time.Time, error) {
	if c.pool == nil {
		return time.Time{}, nil
	}
	return c.pool.BlockedUntil()
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
	case c.pool.Open() > 0:
		return Reachability{State: ReachConnected}
	}
	if until, err := c.pool.BlockedUntil(); !until.IsZero() {
		return Reachability{State: ReachUnreachable, Err: err, Until: until}
	}
	took, err := c.pool.Probe(ctx, c.host)
	if err != nil {
		return Reachability{State: ReachUnreachable, Err: err}
	}
	return Reachability{State: ReachReachable, Took: took}
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

// ClientOptions configures the HTTP/2 connection to APNs: its URL, and
// the connections' settings, which transport.Options explains.
type ClientOptions struct {
	// URL is Production, Development or a test server's https URL.
	URL                                       string
	Roots                                     *x509.CertPool
	ReadIdleTimeout, PingTimeout, IdleTimeout time.Duration
	OnConnect                                 func(error)
	// Connections caps the connections (apnsMaxConnections), and an
	// extra one closes after ExtraIdleTimeout without pushes.
	Connections      int
	ExtraIdleTimeout time.Duration
}

// newPool is the HTTP/2 connection pool the pushes go over. The pusher
// sends straight to it, without an http.Client: every push carries a
// context deadline from the sender (Sender.send, pushDeadlines), so a client timeout
// would only cost a second timer per request.
func newPool(o ClientOptions, certs []tls.Certificate) *transport.Pool {
	return transport.New(transport.Options{Roots: o.Roots, ReadIdleTimeout: o.ReadIdleTimeout, PingTimeout: o.PingTimeout,
		IdleTimeout: o.IdleTimeout, OnConnect: o.OnConnect, Connections: o.Connections, ExtraIdleTimeout: o.ExtraIdleTimeout}, certs)
}

// NewCertificateClient pushes with a client certificate (PEM or PKCS#12).
func NewCertificateClient(cert tls.Certificate, topic string, o ClientOptions) *Client {
	pool := newPool(o, []tls.Certificate{cert})
	return &Client{Topic: topic, Transport: newPusher(o.URL, pool, nil), pool: pool, host: endpointHost(o.URL)}
}

// NewTokenClient pushes with a .p8 signing key (JWT bearer tokens). Pass
// the Token of the client this one replaces when it signs with the same
// key (Token.Same), so that a reload does not count as a token update at
// Apple.
func NewTokenClient(tok *Token, topic string, o ClientOptions) *Client {
	pool := newPool(o, nil)
	return &Client{Topic: topic, Transport: newPusher(o.URL, pool, tok.tok), pool: pool, token: tok, host: endpointHost(o.URL)}
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
