package apns

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"net/url"
	"reflect"
	"regexp"
	"testing"
	"time"

	"github.com/sideshow/apns2"

	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

// sameAsApns2 sends each notification once with apns2.Client and once
// with the pusher, over one pool to srv, and fails unless both requests
// arrived the same (method, path, every header, body) and both got the
// same Response and error.
func sameAsApns2(t *testing.T, srv *fakeapns.Server, certs []tls.Certificate, tok *Token, ns []*apns2.Notification) {
	t.Helper()
	pool := newPool(ClientOptions{Roots: srv.CertPool()}, certs)
	t.Cleanup(pool.CloseIdleConnections)
	old := &apns2.Client{Host: srv.URL, HTTPClient: &http.Client{Transport: pool}}
	var p *pusher
	if tok != nil {
		old.Token = tok.tok
		p = newPusher(srv.URL, pool, tok.tok)
	} else {
		p = newPusher(srv.URL, pool, nil)
	}
	for i, n := range ns {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		wantResp, wantErr := old.PushWithContext(ctx, n)
		gotResp, gotErr := p.PushWithContext(ctx, n)
		cancel()
		reqs, err := srv.WaitRequests(2*(i+1), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		want, got := reqs[2*i], reqs[2*i+1]
		if want.Method != got.Method || want.Path != got.Path || want.Proto != got.Proto ||
			string(want.Body) != string(got.Body) || !reflect.DeepEqual(want.Header, got.Header) {
			t.Errorf("notification %d: apns2 sent %s %s %s %v %q, the pusher %s %s %s %v %q", i,
				want.Method, want.Path, want.Proto, want.Header, want.Body, got.Method, got.Path, got.Proto, got.Header, got.Body)
		}
		if (wantErr == nil) != (gotErr == nil) || wantErr != nil && streamID.ReplaceAllString(wantErr.Error(), "") != streamID.ReplaceAllString(gotErr.Error(), "") {
			t.Errorf("notification %d: apns2 returned error %v, the pusher %v", i, wantErr, gotErr)
		}
		// The apns-id differs (the stand-in makes one per request).
		if wantResp != nil && gotResp != nil && wantResp.ApnsID != "" && gotResp.ApnsID != "" {
			wantResp.ApnsID, gotResp.ApnsID = "id", "id"
		}
		if !reflect.DeepEqual(wantResp, gotResp) {
			t.Errorf("notification %d: apns2 returned %+v, the pusher %+v", i, wantResp, gotResp)
		}
	}
}

// streamID is left out when errors are compared: each request has its own.
var streamID = regexp.MustCompile(`stream ID [0-9]+`)

// notifications covers what the sender sends (every account id escaping
// differently) and the header options it does not use.
func notifications() []*apns2.Notification {
	exp := time.Now().Add(time.Hour)
	var ns []*apns2.Notification
	for _, acc := range []string{"", "acc-1", `quote"back\slash`, "<html>&amp;", "ünïcödé…", "line\u2028sep\u2029", "\x00\x1f\x7f", "\xff invalid utf-8"} {
		ns = append(ns, &apns2.Notification{DeviceToken: "0a1b2c3d4e5f", Topic: testTopic, PushType: apns2.PushTypeBackground,
			Expiration: exp, Priority: apns2.PriorityLow, Payload: Payload(acc)})
	}
	return append(ns,
		&apns2.Notification{DeviceToken: "ABCDEF0123", Topic: testTopic, PushType: apns2.PushTypeBackground, Expiration: exp,
			Priority: apns2.PriorityHigh, Payload: Payload("a")},
		&apns2.Notification{DeviceToken: "abcdef", Topic: testTopic, Priority: 7, Payload: `{"aps":{}}`,
			ApnsID: "123e4567-e89b-12d3-a456-426614174000", CollapseID: "c"},
		&apns2.Notification{DeviceToken: "abcdef", Topic: testTopic, PushType: apns2.PushTypeVOIP,
			Payload: map[string]any{"aps": map[string]any{"content-available": 1}}},
		&apns2.Notification{DeviceToken: "ab%2Fcd", Topic: testTopic, Payload: Payload("x")},
	)
}

func TestPusherSendsWhatApns2Sends(t *testing.T) {
	leaf, err := testpki.NewPushCert(testTopic)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("certificate", func(t *testing.T) {
		srv := fakeapns.StartT(t, fakeapns.Options{})
		sameAsApns2(t, srv, []tls.Certificate{leaf.TLSCertificate()}, nil, notifications())
	})
	t.Run("token", func(t *testing.T) {
		srv := fakeapns.StartT(t, fakeapns.Options{})
		sameAsApns2(t, srv, nil, NewToken(newTestToken(t)), notifications())
	})
}

func TestPusherReadsAnswersAsApns2Does(t *testing.T) {
	answers := []fakeapns.Response{
		{},
		{Status: http.StatusBadRequest, Reason: apns2.ReasonBadDeviceToken},
		{Status: http.StatusGone, Reason: apns2.ReasonUnregistered, Timestamp: 1700000000123},
		{Status: http.StatusForbidden, Reason: apns2.ReasonBadCertificate},
		{Status: http.StatusTooManyRequests},
		{Status: http.StatusServiceUnavailable},
		{Reset: true}, // an error from the transport
	}
	srv := fakeapns.StartT(t, fakeapns.Options{})
	var ns []*apns2.Notification
	for range answers {
		ns = append(ns, notifications()[1])
	}
	n := 0
	srv.SetResponder(func(fakeapns.Request) fakeapns.Response {
		defer func() { n++ }()
		return answers[n/2] // each answer twice: to apns2, then to the pusher
	})
	sameAsApns2(t, srv, nil, NewToken(newTestToken(t)), ns)
}

func TestPusherErrorsAreURLErrors(t *testing.T) {
	srv := fakeapns.StartT(t, fakeapns.Options{})
	srv.SetResponder(func(fakeapns.Request) fakeapns.Response { return fakeapns.Response{Drop: true} })
	p := newPusher(srv.URL, newPool(ClientOptions{Roots: srv.CertPool()}, nil), nil)
	_, err := p.PushWithContext(context.Background(), notifications()[1])
	var ue *url.Error
	if !errors.As(err, &ue) || ue.Op != "Post" || ue.URL != srv.URL+"/3/device/0a1b2c3d4e5f" {
		t.Fatalf("error %#v, want a *url.Error for the Post to the device's URL", err)
	}
	if got := transportReason(err); got != "Post APNs: "+ue.Err.Error() {
		t.Errorf("reason %q", got)
	}
}
