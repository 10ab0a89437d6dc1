package apns

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"time"

	"github.com/sideshow/apns2"
	"github.com/sideshow/apns2/token"
	"github.com/sirupsen/logrus"
	"golang.org/x/net/http2"

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
}

// CloseIdle closes the client's connections that carry no push. Retired
// credentials need it: the health-check PINGs would otherwise keep their
// connection to Apple open for as long as the daemon runs.
func (c *Client) CloseIdle() {
	if t, ok := c.Transport.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
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
}

func newHTTPClient(o ClientOptions, certs []tls.Certificate) *http.Client {
	tr := &http2.Transport{
		TLSClientConfig: &tls.Config{Certificates: certs, RootCAs: o.Roots, MinVersion: tls.VersionTLS12},
		// Apple drops idle connections silently; a PING after 15 s of
		// silence finds a dead connection before a push is lost on it.
		ReadIdleTimeout: 15 * time.Second,
		PingTimeout:     10 * time.Second,
		// APNs answers with a few bytes of JSON; asking for gzip only adds
		// a header to every push.
		DisableCompression: true,
		// WriteByteTimeout must stay unset: writes go to coalescingConn's
		// buffer, so x/net's per-write deadline would time nothing. A
		// stuck connection is found by the PING health check instead.
		DialTLSContext: func(ctx context.Context, network, addr string, cfg *tls.Config) (net.Conn, error) {
			d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 20 * time.Second, KeepAlive: 15 * time.Second}, Config: cfg}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return newCoalescingConn(c, 0), nil
		},
	}
	// No http.Client.Timeout: every push carries a context deadline from
	// the sender (Sender.attempt), and a second deadline per request only
	// cost a timer and a context.
	return &http.Client{Transport: tr}
}

// NewCertificateClient pushes with a client certificate (PEM or PKCS#12).
func NewCertificateClient(cert tls.Certificate, topic string, o ClientOptions) *Client {
	c := &apns2.Client{Certificate: cert, Host: o.URL, HTTPClient: newHTTPClient(o, []tls.Certificate{cert})}
	return &Client{Topic: topic, Transport: c}
}

// NewTokenClient pushes with a .p8 signing key (JWT bearer tokens).
func NewTokenClient(tok *token.Token, topic string, o ClientOptions) *Client {
	c := &apns2.Client{Token: tok, Host: o.URL, HTTPClient: newHTTPClient(o, nil)}
	return &Client{Topic: topic, Transport: c}
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
