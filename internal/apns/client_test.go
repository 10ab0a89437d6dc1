package apns

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sideshow/apns2"

	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

const testTopic = "com.apple.mail.XServer.0a1b2c3d-4e5f-6789-abcd-ef0123456789"

// realClient is a certificate client pointed at an HTTP/2 TLS stand-in
// for APNs.
func realClient(t *testing.T, o fakeapns.Options) (*Client, *fakeapns.Server) {
	t.Helper()
	srv, err := fakeapns.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return realClientOn(t, srv)
}

// realClientOn is a certificate client pointed at srv.
func realClientOn(t *testing.T, srv *fakeapns.Server) (*Client, *fakeapns.Server) {
	t.Helper()
	ca, err := testpki.NewCA("push CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(testpki.IssueOptions{UID: testTopic})
	if err != nil {
		t.Fatal(err)
	}
	c := NewCertificateClient(leaf.TLSCertificate(), testTopic, ClientOptions{URL: srv.URL, Roots: srv.CertPool()})
	t.Cleanup(c.Transport.(*apns2.Client).CloseIdleConnections)
	return c, srv
}

func push(c *Client, token string) (*apns2.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Transport.PushWithContext(ctx, &apns2.Notification{
		DeviceToken: token, Topic: c.Topic, PushType: apns2.PushTypeBackground,
		Expiration: time.Now().Add(time.Hour), Payload: Payload("acc-" + token),
	})
}

// Many pushes at once share the connection's writes; every one must still
// reach Apple whole and get its own answer.
func TestClientDeliversConcurrentPushesOverOneConnection(t *testing.T) {
	c, srv := realClient(t, fakeapns.Options{})
	const n = 500
	for _, err := range pushAll(c, n) {
		t.Error(err)
	}
	reqs, err := srv.WaitRequests(n, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range reqs {
		if want := `{"aps":{"account-id":"acc-` + r.Token + `"}}`; string(r.Body) != want {
			t.Fatalf("body %s for token %s, want %s", r.Body, r.Token, want)
		}
		if r.Topic != testTopic || r.PushType != "background" || r.ClientCertSubjectUID != testTopic || r.Proto != "HTTP/2.0" {
			t.Fatalf("request %+v", r)
		}
		// APNs answers a few bytes of JSON: no gzip header on every push.
		if ae := r.Header.Get("Accept-Encoding"); ae != "" {
			t.Fatalf("Accept-Encoding %q sent", ae)
		}
		seen[r.Token] = true
	}
	if len(seen) != n {
		t.Fatalf("%d distinct tokens reached the server, want %d", len(seen), n)
	}
}

// A connection Apple drops fails the pushes on it; they go again at once
// over a new connection.
func TestClientRecoversFromADroppedConnection(t *testing.T) {
	var dropped atomic.Bool
	c, srv := realClient(t, fakeapns.Options{Responder: func(r fakeapns.Request) fakeapns.Response {
		return fakeapns.Response{Drop: r.Token == "aa" && dropped.CompareAndSwap(false, true)}
	}})
	if resp, err := push(c, "bb"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("first push: %v %+v", err, resp)
	}
	resp, err := push(c, "aa")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("push on a dropped connection: %v %+v", err, resp)
	}
	reqs := srv.Requests()
	if len(reqs) != 3 || reqs[1].Token != "aa" || reqs[2].Token != "aa" || reqs[1].Conn != 1 || reqs[2].Conn != 2 {
		t.Errorf("requests: %+v", reqs)
	}
}
