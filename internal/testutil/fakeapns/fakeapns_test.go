package fakeapns

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sideshow/apns2"
	"github.com/sideshow/apns2/token"
	"golang.org/x/net/http2"

	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

const (
	topic  = "com.apple.mail.XServer.01234567-89ab-cdef-0123-456789abcdef"
	token1 = "2918f1d5e8d64b7a9f2a3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081"
	token2 = "AAAAF1D5E8D64B7A9F2A3C4D5E6F708192A3B4C5D6E7F8091A2B3C4D5E6F7081"
)

var (
	pushCertOnce sync.Once
	pushCert     *testpki.Leaf
	pushCertErr  error
)

// certClient is an apns2 client with a push certificate, pointed at s.
func certClient(t *testing.T, s *Server) *apns2.Client {
	t.Helper()
	pushCertOnce.Do(func() {
		var ca *testpki.CA
		if ca, pushCertErr = testpki.NewCA("push CA"); pushCertErr == nil {
			pushCert, pushCertErr = ca.Issue(testpki.IssueOptions{UID: topic, CommonName: "Apple Push Services: " + topic})
		}
	})
	if pushCertErr != nil {
		t.Fatal(pushCertErr)
	}
	c := apns2.NewClient(pushCert.TLSCertificate())
	return aim(t, c, s)
}

// tokenClient is an apns2 client in token mode, pointed at s.
func tokenClient(t *testing.T, s *Server) *apns2.Client {
	t.Helper()
	_, key, err := testpki.NewP8Key()
	if err != nil {
		t.Fatal(err)
	}
	return aim(t, apns2.NewTokenClient(&token.Token{AuthKey: key, KeyID: "ABCDEFGHIJ", TeamID: "KLMNOPQRST"}), s)
}

func aim(t *testing.T, c *apns2.Client, s *Server) *apns2.Client {
	t.Helper()
	c.Host = s.URL
	tr := c.HTTPClient.Transport.(*http2.Transport)
	if tr.TLSClientConfig == nil {
		tr.TLSClientConfig = &tls.Config{}
	}
	tr.TLSClientConfig.RootCAs = s.CertPool()
	c.HTTPClient.Timeout = 10 * time.Second
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func note(tok string) *apns2.Notification {
	return &apns2.Notification{DeviceToken: tok, Topic: topic, PushType: apns2.PushTypeBackground,
		Payload: []byte(`{"aps":{"account-id":"0715A26B-CA09-4730-A419-793000CA982E"}}`)}
}

func TestRecordsExactly(t *testing.T) {
	s := StartT(t, Options{})
	if !strings.HasPrefix(s.URL, "https://127.0.0.1:") {
		t.Errorf("URL %q", s.URL)
	}
	c := certClient(t, s)
	n := note(token1)
	n.ApnsID = "6A1D5B63-3D4B-4C43-9E1B-7E0E4B7C2F10"
	n.CollapseID = "acct-1"
	n.Priority = apns2.PriorityLow
	n.Expiration = time.Unix(1900000000, 0)
	res, err := c.Push(n)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 || res.ApnsID != n.ApnsID || res.Reason != "" {
		t.Errorf("response %+v", res)
	}
	reqs, err := s.WaitRequests(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	r := reqs[0]
	want := Request{
		Token: token1, Topic: topic, PushType: "background", Priority: "5", Expiration: "1900000000",
		CollapseID: "acct-1", ApnsID: n.ApnsID, Method: "POST", Path: "/3/device/" + token1,
		ContentType: "application/json; charset=utf-8", ClientCertSubjectUID: topic, Proto: "HTTP/2.0", Conn: 1,
	}
	got := r
	got.Header, got.Body, got.Received = nil, nil, time.Time{}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("recorded\n%+v\nwant\n%+v", got, want)
	}
	if string(r.Body) != `{"aps":{"account-id":"0715A26B-CA09-4730-A419-793000CA982E"}}` {
		t.Errorf("body %q", r.Body)
	}
	if r.Header.Get("apns-collapse-id") != "acct-1" || r.Header.Get("user-agent") == "" {
		t.Errorf("header %v", r.Header)
	}
	if time.Since(r.Received) > 5*time.Second || r.Received.IsZero() {
		t.Errorf("Received %v", r.Received)
	}

	// Without an apns-id the server makes one up, as APNs does, and
	// absent headers record as "".
	m := note(token2)
	m.PushType = ""
	res, err = c.Push(m)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}$`).MatchString(res.ApnsID) {
		t.Errorf("generated apns-id %q", res.ApnsID)
	}
	reqs, _ = s.WaitRequests(2, 5*time.Second)
	if r := reqs[1]; r.Token != token2 || r.Priority != "" || r.CollapseID != "" || r.ApnsID != "" || r.PushType != "alert" || r.Authorization != "" {
		t.Errorf("second request %+v", r)
	}
	if s.Count() != 2 {
		t.Errorf("Count = %d", s.Count())
	}
}

func TestTokenAuthorization(t *testing.T) {
	s := StartT(t, Options{})
	c := tokenClient(t, s)
	if _, err := c.Push(note(token1)); err != nil {
		t.Fatal(err)
	}
	reqs, err := s.WaitRequests(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	r := reqs[0]
	if !strings.HasPrefix(r.Authorization, "bearer ey") || strings.Count(r.Authorization, ".") != 2 {
		t.Errorf("authorization %q", r.Authorization)
	}
	if r.ClientCertSubjectUID != "" {
		t.Errorf("client certificate UID %q without a certificate", r.ClientCertSubjectUID)
	}
}

func TestScriptedAnswers(t *testing.T) {
	s := StartT(t, Options{})
	c := certClient(t, s)
	for _, tc := range []struct {
		name       string
		resp       Response
		status     int
		reason     string
		timestamp  time.Time
		apnsIDSeen bool
	}{
		{"ok", Response{}, 200, "", time.Time{}, true},
		{"explicit 200", Response{Status: 200}, 200, "", time.Time{}, true},
		{"bad token", Response{Status: 400, Reason: apns2.ReasonBadDeviceToken}, 400, "BadDeviceToken", time.Time{}, true},
		// apns2 cuts the millisecond timestamp to whole seconds.
		{"unregistered", Response{Status: 410, Reason: apns2.ReasonUnregistered, Timestamp: 1700000000123}, 410, "Unregistered", time.Unix(1700000000, 0), true},
		{"410 default reason", Response{Status: 410, Timestamp: 1700000001999}, 410, "Unregistered", time.Unix(1700000001, 0), true},
		{"throttled", Response{Status: 429, Reason: apns2.ReasonTooManyRequests}, 429, "TooManyRequests", time.Time{}, true},
		{"unavailable, default reason", Response{Status: 503}, 503, "ServiceUnavailable", time.Time{}, true},
		{"custom 403", Response{Status: 403, Reason: "ExpiredProviderToken"}, 403, "ExpiredProviderToken", time.Time{}, true},
		{"500", Response{Status: 500}, 500, "InternalServerError", time.Time{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.SetResponder(func(Request) Response { return tc.resp })
			res, err := c.Push(note(token1))
			if err != nil {
				t.Fatal(err)
			}
			if res.StatusCode != tc.status || res.Reason != tc.reason || !res.Timestamp.Equal(tc.timestamp) {
				t.Errorf("got %d %q %v, want %d %q %v", res.StatusCode, res.Reason, res.Timestamp.Time, tc.status, tc.reason, tc.timestamp)
			}
			if tc.apnsIDSeen && res.ApnsID == "" {
				t.Error("no apns-id on the answer")
			}
			if res.Sent() != (tc.status == 200) {
				t.Errorf("Sent() = %v", res.Sent())
			}
		})
	}
}

// rawBody posts with a plain HTTP/2 client, to see bodies apns2 hides.
func rawDo(t *testing.T, s *Server, method, path string, body []byte) (int, string) {
	t.Helper()
	hc := &http.Client{Transport: &http2.Transport{TLSClientConfig: &tls.Config{RootCAs: s.CertPool()}}, Timeout: 10 * time.Second}
	req, err := http.NewRequest(method, s.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	res, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func TestBadRequestsGetApplesStatusAndReason(t *testing.T) {
	var called atomic.Int32
	s := StartT(t, Options{Responder: func(Request) Response { called.Add(1); return Response{} }})
	for _, c := range []struct {
		method, path string
		body         []byte
		status       int
		body410      string
	}{
		{"GET", "/3/device/" + token1, nil, 405, `{"reason":"MethodNotAllowed"}`},
		{"POST", "/3/devices/" + token1, nil, 404, `{"reason":"BadPath"}`},
		{"POST", "/", nil, 404, `{"reason":"BadPath"}`},
		{"POST", "/3/device/", nil, 400, `{"reason":"MissingDeviceToken"}`},
		{"POST", "/3/device/" + token1, nil, 400, `{"reason":"PayloadEmpty"}`},
		{"POST", "/3/device/not-hex", nil, 400, `{"reason":"BadDeviceToken"}`},
		{"POST", "/3/device/" + token1, bytes.Repeat([]byte("x"), 4097), 413, `{"reason":"PayloadTooLarge"}`},
	} {
		st, body := rawDo(t, s, c.method, c.path, c.body)
		if st != c.status || body != c.body410 {
			t.Errorf("%s %s: %d %s, want %d %s", c.method, c.path, st, body, c.status, c.body410)
		}
	}
	if n := called.Load(); n != 0 {
		t.Errorf("responder consulted %d times for invalid requests", n)
	}
	if st, body := rawDo(t, s, "POST", "/3/device/"+token1, bytes.Repeat([]byte("x"), 4096)); st != 200 || body != "" {
		t.Errorf("4096-byte payload: %d %q", st, body)
	}
	if called.Load() != 1 || s.Count() != 8 || len(s.Requests()) != 8 {
		t.Errorf("responder %d, count %d, recorded %d", called.Load(), s.Count(), len(s.Requests()))
	}
}

func TestDelayedAnswerIsRecordedOnArrival(t *testing.T) {
	s := StartT(t, Options{Responder: func(Request) Response { return Response{Delay: 300 * time.Millisecond} }})
	c := certClient(t, s)
	begin := time.Now()
	res, err := c.Push(note(token1))
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d < 300*time.Millisecond || res.StatusCode != 200 {
		t.Errorf("answered %d after %v, want 200 after 300ms", res.StatusCode, d)
	}
	// The request is recorded when it arrives, not when it is answered.
	if r := s.Requests()[0]; r.Received.Sub(begin) > 250*time.Millisecond {
		t.Errorf("recorded %v after sending", r.Received.Sub(begin))
	}
}

// pushAsync pushes in the background and reports the outcome.
func pushAsync(c *apns2.Client, n *apns2.Notification) <-chan error {
	ch := make(chan error, 1)
	go func() {
		res, err := c.Push(n)
		if err == nil && res.StatusCode != 200 {
			err = errors.New(res.Reason)
		}
		ch <- err
	}()
	return ch
}

func waitErr(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("push did not return")
		return nil
	}
}

func TestDroppedRequestFailsAndOthersCarryOn(t *testing.T) {
	s := StartT(t, Options{})
	s.SetResponder(func(r Request) Response {
		if r.Token == token2 {
			return Response{Drop: true}
		}
		return Response{Delay: 5 * time.Second}
	})
	c := certClient(t, s)
	slow := pushAsync(c, note(token1))
	if _, err := s.WaitRequests(1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Push(note(token2)); err == nil {
		t.Fatal("dropped request succeeded")
	}
	// The whole connection went, with the slow request on it.
	begin := time.Now()
	if err := waitErr(t, slow); err == nil || time.Since(begin) > 3*time.Second {
		t.Errorf("request in flight on the dropped connection: %v after %v", err, time.Since(begin))
	}
	// The client reconnects and the server still answers.
	s.SetResponder(nil)
	if res, err := c.Push(note(token1)); err != nil || res.StatusCode != 200 {
		t.Errorf("after drop: %v %v", res, err)
	}
}

func TestResetStreamFailsAndOthersCarryOn(t *testing.T) {
	s := StartT(t, Options{})
	s.SetResponder(func(r Request) Response {
		if r.Token == token2 {
			return Response{Reset: true}
		}
		return Response{Delay: 300 * time.Millisecond}
	})
	c := certClient(t, s)
	slow := pushAsync(c, note(token1))
	if _, err := s.WaitRequests(1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Push(note(token2)); err == nil {
		t.Fatal("reset request succeeded")
	}
	// Only the stream was reset; its neighbour is answered.
	if err := waitErr(t, slow); err != nil {
		t.Errorf("neighbouring request: %v", err)
	}
}

func TestDropConnectionsAndClose(t *testing.T) {
	s := StartT(t, Options{Responder: func(Request) Response { return Response{Delay: 10 * time.Second} }})
	c := certClient(t, s)
	slow := pushAsync(c, note(token1))
	if _, err := s.WaitRequests(1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	s.DropConnections()
	if err := waitErr(t, slow); err == nil {
		t.Error("request survived DropConnections")
	}

	slow = pushAsync(c, note(token1))
	if _, err := s.WaitRequests(2, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if d := time.Since(begin); d > 3*time.Second {
		t.Errorf("Close waited %v for a delayed answer", d)
	}
	if err := waitErr(t, slow); err == nil {
		t.Error("delayed request answered successfully after Close")
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := c.Push(note(token1)); err == nil {
		t.Error("push after Close succeeded")
	}
}

func TestNoRecordCountsWithoutRecording(t *testing.T) {
	s := StartT(t, Options{NoRecord: true})
	c := certClient(t, s)
	for range 3 {
		if _, err := c.Push(note(token1)); err != nil {
			t.Fatal(err)
		}
	}
	if s.Count() != 3 || len(s.Requests()) != 0 {
		t.Errorf("count %d, recorded %d", s.Count(), len(s.Requests()))
	}
	if _, err := s.WaitRequests(1, time.Second); err == nil {
		t.Error("WaitRequests succeeded without recording")
	}
}

func TestWaitRequestsTimeout(t *testing.T) {
	s := StartT(t, Options{})
	if _, err := certClient(t, s).Push(note(token1)); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	got, err := s.WaitRequests(2, 200*time.Millisecond)
	if err == nil || len(got) != 1 || time.Since(begin) < 200*time.Millisecond {
		t.Errorf("got %d requests, %v", len(got), err)
	}
}

// HTTP/1.1 is not offered, as at Apple.
func TestHTTP1Refused(t *testing.T) {
	s := StartT(t, Options{})
	hc := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: s.CertPool(), NextProtos: []string{"http/1.1"}},
		TLSNextProto:    map[string]func(string, *tls.Conn) http.RoundTripper{},
	}}
	res, err := hc.Post(s.URL+"/3/device/"+token1, "application/json", strings.NewReader("{}"))
	if err == nil {
		res.Body.Close()
		t.Fatalf("HTTP/1.1 request answered %d", res.StatusCode)
	}
}

// The stream limit is what the server advertises in its SETTINGS (x/net's
// strict-limit client is not used to check it: it stalls at low limits).
func TestMaxConcurrentStreams(t *testing.T) {
	for _, c := range []struct{ opt, want uint32 }{{0, 1000}, {3, 3}} {
		s := StartT(t, Options{MaxConcurrentStreams: int(c.opt)})
		rc, err := dialRaw(s)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-rc.settings:
		case <-time.After(5 * time.Second):
			t.Fatal("no SETTINGS from the server")
		}
		rc.conn.Close()
		if rc.maxStreams != c.want {
			t.Errorf("MaxConcurrentStreams %d: server advertises %d, want %d", c.opt, rc.maxStreams, c.want)
		}
	}
}

func TestCAFileIsTheCACertificateAndTrustsTheServer(t *testing.T) {
	s := StartT(t, Options{})
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := s.WriteCAFile(p); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, s.CACertPEM()) {
		t.Error("CA file differs from CACertPEM")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		t.Fatal("CA file is not PEM")
	}
	conn, err := tls.Dial("tcp", strings.TrimPrefix(s.URL, "https://"), &tls.Config{RootCAs: pool, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatalf("handshake trusting the CA file: %v", err)
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Errorf("ALPN %q", p)
	}
	conn.Close()
	if _, err := tls.Dial("tcp", strings.TrimPrefix(s.URL, "https://"), &tls.Config{RootCAs: x509.NewCertPool()}); err == nil {
		t.Error("handshake succeeded without trusting the CA")
	}
	if err := s.WriteCAFile(filepath.Join(t.TempDir(), "no", "such", "dir.pem")); err == nil {
		t.Error("WriteCAFile into a missing folder succeeded")
	}
}

// A listener the caller made (in another network namespace, in the
// container tests) is served as is, and Close closes it.
func TestGivenListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := StartT(t, Options{Listener: ln, Addr: "192.0.2.1:1"}) // Addr is not used
	if s.URL != "https://"+ln.Addr().String() {
		t.Errorf("URL %q, want the listener's address %s", s.URL, ln.Addr())
	}
	if _, err := certClient(t, s).Push(note(token1)); err != nil {
		t.Fatal(err)
	}
	if n := s.Count(); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
	s.Close()
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Error("the listener still accepts after Close")
	}
}

// BenchmarkServer measures requests per second with 500 in flight from
// x/net's HTTP/2 client, the one apns2 uses. Client and server share the
// machine, and the client costs more CPU per request than the server;
// BenchmarkServerRaw measures the server alone.
func BenchmarkServer(b *testing.B) {
	s, err := Start(Options{NoRecord: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	hc := &http.Client{Transport: &http2.Transport{TLSClientConfig: &tls.Config{RootCAs: s.CertPool()}}}
	url := s.URL + "/3/device/" + token1
	payload := []byte(`{"aps":{"account-id":"0715A26B-CA09-4730-A419-793000CA982E"}}`)
	const inFlight = 500
	var next, failed atomic.Int64
	b.ResetTimer()
	begin := time.Now()
	var wg sync.WaitGroup
	for range inFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, url, bytes.NewReader(payload))
				req.Header.Set("apns-topic", topic)
				req.Header.Set("apns-push-type", "background")
				res, err := hc.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != 200 {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(begin).Seconds(), "req/s")
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d requests failed", f, b.N)
	}
}
