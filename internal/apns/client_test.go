package apns

import (
	"context"
	"fmt"
	"sync"
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
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok := fmt.Sprintf("%064x", i)
			resp, err := push(c, tok)
			if err != nil {
				errs <- err
				return
			}
			if resp.StatusCode != 200 {
				errs <- fmt.Errorf("push %d: status %d %s", i, resp.StatusCode, resp.Reason)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
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

// A connection Apple drops fails the pushes on it; the next push dials a
// new one.
func TestClientRecoversFromADroppedConnection(t *testing.T) {
	var mu sync.Mutex
	drop := true
	c, _ := realClient(t, fakeapns.Options{Responder: func(fakeapns.Request) fakeapns.Response {
		mu.Lock()
		defer mu.Unlock()
		return fakeapns.Response{Drop: drop}
	}})
	if _, err := push(c, "aa"); err == nil {
		t.Fatal("push on a dropped connection succeeded")
	}
	mu.Lock()
	drop = false
	mu.Unlock()
	resp, err := push(c, "bb")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("push after the drop: %v %+v", err, resp)
	}
}
