package apns

import (
	"context"
	"testing"
	"time"

	"github.com/sideshow/apns2"
	"github.com/sideshow/apns2/token"

	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

const testTopic = "com.apple.mail.XServer.0a1b2c3d-4e5f-6789-abcd-ef0123456789"

// certClientFor is a certificate client pointed at srv.
func certClientFor(t *testing.T, srv *fakeapns.Server) *Client {
	t.Helper()
	leaf, err := testpki.NewPushCert(testTopic)
	if err != nil {
		t.Fatal(err)
	}
	c := NewCertificateClient(leaf.TLSCertificate(), testTopic, ClientOptions{URL: srv.URL, Roots: srv.CertPool()})
	t.Cleanup(c.CloseIdle)
	return c
}

func push(c *Client, token string) (*apns2.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Transport.PushWithContext(ctx, &apns2.Notification{
		DeviceToken: token, Topic: c.Topic, PushType: apns2.PushTypeBackground,
		Expiration: time.Now().Add(time.Hour), Payload: Payload("acc-" + token),
	})
}

// appleServer is the APNs stand-in managing connections as APNs does.
func appleServer(t *testing.T, o fakeapns.Options) *fakeapns.Server {
	t.Helper()
	o.Apple = true
	return fakeapns.StartT(t, o)
}

// tokenClientFor is a token client pointed at srv.
func tokenClientFor(t *testing.T, srv *fakeapns.Server, o ClientOptions) *Client {
	t.Helper()
	o.URL, o.Roots = srv.URL, srv.CertPool()
	c := NewTokenClient(NewToken(newTestToken(t)), testTopic, o)
	t.Cleanup(c.CloseIdle)
	return c
}

func newTestToken(t *testing.T) *token.Token {
	t.Helper()
	tok, err := testpki.NewProviderToken()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
