// Package fakeapns is a stand-in for Apple's push service: a real HTTP/2
// server over TLS on loopback that accepts POST /3/device/<token> the way
// APNs does, records what it received and answers whatever a test scripts
// (200, 400, 410 with a timestamp, 429, 503, latency, a dropped
// connection). With Options.Apple it also manages connections as APNs
// does: one stream on a token connection until a request on it succeeds,
// GOAWAY, connections that go silent; and it can refuse connections.
//
// It serves the daemon's integration tests and the xapsd-bench tool, so
// it does not import "testing" and keeps the per-request path lean enough
// for tens of thousands of requests a second.
package fakeapns

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

// maxPayload is APNs' limit for a regular notification; larger bodies get
// 413 PayloadTooLarge, as from Apple.
const maxPayload = 4096

// Response is what the server answers to one request.
type Response struct {
	Status    int    // 0 means 200
	Reason    string // the {"reason": ...} of a non-200 answer; empty picks Apple's usual one for Status
	Timestamp int64  // ms since the epoch, sent with 410 answers; 0 leaves it out
	// Delay holds the answer back, like Apple's latency. The request
	// still counts and is recorded on arrival.
	Delay time.Duration
	// Drop closes the client's TCP connection without answering, which
	// fails this request and every other one in flight on it.
	Drop bool
	// Reset cancels only this stream (RST_STREAM) and leaves the
	// connection up.
	Reset bool
	// GoAway, when set, sends GOAWAY with this reason ("Shutdown",
	// "IdleTimeout", …) on the request's connection once it is answered,
	// then closes the connection (Options.Apple only).
	GoAway string
}

// Request is one request as it arrived. Header values are copied
// verbatim; an absent header is "".
type Request struct {
	Token         string // the <token> of /3/device/<token>
	Topic         string // apns-topic
	PushType      string // apns-push-type
	Priority      string // apns-priority
	Expiration    string // apns-expiration
	Authorization string // authorization, "bearer <jwt>" in token mode
	CollapseID    string // apns-collapse-id
	ApnsID        string // apns-id
	Method        string
	Path          string
	ContentType   string
	Header        http.Header // every header, for what the fields above miss
	Body          []byte
	// ClientCertSubjectUID is the UID (the push topic) of the client
	// certificate presented, if any.
	ClientCertSubjectUID string
	Received             time.Time
	Proto                string // "HTTP/2.0"
	// Conn numbers the connection the request came on, in the order the
	// server accepted connections, from 1.
	Conn int64
}

// Options configures Start. The zero value is a recording server on a
// free loopback port that answers 200 to everything.
type Options struct {
	Addr string // default 127.0.0.1:0
	// Listener, when set, is served instead of a new one on Addr: one
	// made in another network namespace, say. Close closes it.
	Listener  net.Listener
	Responder func(Request) Response // nil answers 200
	// NoRecord keeps only the count, for benchmarks; Requests and
	// WaitRequests then have nothing to return.
	NoRecord bool
	// MaxConcurrentStreams per connection; default 1000, the value Apple
	// advertises.
	MaxConcurrentStreams int
	// Apple manages each connection as APNs does. It needs the HTTP/2
	// frames between client and server (frames.go) and costs CPU per
	// frame, so benchmarks leave it off. With it:
	//   - a token connection (one without a client certificate) is
	//     offered one stream until a request on it is answered 200, then
	//     MaxConcurrentStreams, and one again after a 403; a request over
	//     the limit in force is reset unanswered and counted in
	//     Violations, not in Count;
	//   - a request on a token connection without an authorization
	//     header gets 403 MissingProviderToken, one without apns-topic
	//     400 MissingTopic;
	//   - GoAway, Response.GoAway, SilenceConnections and
	//     AnswerPings(false) work.
	Apple bool
}

// Server is a running stand-in. It is safe for concurrent use.
type Server struct {
	URL string // https://127.0.0.1:port

	ca       *testpki.CA
	srv      *http.Server
	record   bool
	done     chan struct{} // closed by Close: releases delayed answers
	served   chan struct{} // closed when Serve returns
	closeErr error
	once     sync.Once

	responder atomic.Pointer[func(Request) Response]
	count     atomic.Int64

	apple       bool
	maxStreams  int
	appleTLS    *tls.Config // the handshake frameConn does itself
	accepted    atomic.Int64
	refuse      atomic.Bool
	answerPings atomic.Bool
	violations  atomic.Int64

	mu      sync.Mutex
	reqs    []Request
	changed chan struct{} // closed and replaced whenever reqs grows
	conns   map[net.Conn]struct{}
}

type connKey struct{}

// connInfo is what a request knows about its connection.
type connInfo struct {
	conn net.Conn
	id   int64
	fc   *frameConn // Options.Apple only
}

// idConn numbers a connection when Options.Apple is off (frameConn
// carries the number otherwise).
type idConn struct {
	net.Conn
	id int64
}

// listener numbers the connections it accepts, refuses them on request,
// and puts a frameConn on them when Options.Apple is set.
type listener struct {
	net.Listener
	s *Server
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		id := l.s.accepted.Add(1)
		if l.s.refuse.Load() {
			resetTCP(c)
			continue
		}
		if l.s.apple {
			return newFrameConn(l.s, c, id), nil
		}
		return &idConn{Conn: c, id: id}, nil
	}
}

// resetTCP closes a connection with a TCP reset, as a server that
// refuses connections does to a client in the middle of its handshake.
func resetTCP(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// StartT starts a server for a test and closes it when the test ends; it
// fails the test if the server does not start.
func StartT(t testutil.TB, o Options) *Server {
	t.Helper()
	s, err := Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Start listens and serves until Close.
func Start(o Options) (*Server, error) {
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	if o.MaxConcurrentStreams <= 0 {
		o.MaxConcurrentStreams = 1000
	}
	ca, err := testpki.NewCA("fakeapns CA")
	if err != nil {
		return nil, err
	}
	leaf, err := testpki.ServerCert(ca)
	if err != nil {
		return nil, err
	}
	ln := o.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", o.Addr); err != nil {
			return nil, fmt.Errorf("listen %s: %w", o.Addr, err)
		}
	}
	s := &Server{
		URL:        "https://" + ln.Addr().String(),
		ca:         ca,
		record:     !o.NoRecord,
		done:       make(chan struct{}),
		served:     make(chan struct{}),
		changed:    make(chan struct{}),
		conns:      map[net.Conn]struct{}{},
		apple:      o.Apple,
		maxStreams: o.MaxConcurrentStreams,
	}
	s.answerPings.Store(true)
	s.SetResponder(o.Responder)
	var protos http.Protocols
	protos.SetHTTP2(true) // APNs speaks nothing else
	if o.Apple {
		// frameConn does TLS and hands the server plain HTTP/2.
		protos = http.Protocols{}
		protos.SetUnencryptedHTTP2(true)
	}
	s.srv = &http.Server{
		Handler:   s,
		Protocols: &protos,
		HTTP2:     &http.HTTP2Config{MaxConcurrentStreams: o.MaxConcurrentStreams},
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{leaf.TLSCertificate()},
			MinVersion:   tls.VersionTLS12,
			// Requested, not required, and not verified: token-mode
			// clients present none, and test push certificates come from
			// CAs this server does not know. It only reads their UID.
			ClientAuth: tls.RequestClientCert,
		},
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			ci := &connInfo{conn: c}
			switch x := c.(type) {
			case *frameConn:
				ci.id, ci.fc = x.id, x
			case *tls.Conn:
				if ic, ok := x.NetConn().(*idConn); ok {
					ci.id = ic.id
				}
			}
			return context.WithValue(ctx, connKey{}, ci)
		},
		ConnState: s.trackConn,
		// Handshakes that clients abandon are routine in failure tests.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	s.appleTLS = s.srv.TLSConfig.Clone()
	s.appleTLS.NextProtos = []string{"h2"}
	wl := &listener{Listener: ln, s: s}
	go func() {
		defer close(s.served)
		// ErrServerClosed after Close.
		if o.Apple {
			_ = s.srv.Serve(wl)
		} else {
			_ = s.srv.ServeTLS(wl, "", "")
		}
	}()
	return s, nil
}

func (s *Server) trackConn(c net.Conn, st http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch st {
	case http.StateNew:
		s.conns[c] = struct{}{}
	case http.StateClosed, http.StateHijacked:
		delete(s.conns, c)
	}
}

// SetResponder replaces the function that decides answers; nil answers
// 200. It applies to requests arriving afterwards.
func (s *Server) SetResponder(f func(Request) Response) {
	if f == nil {
		s.responder.Store(nil)
		return
	}
	s.responder.Store(&f)
}

// OpenConnections is the number of client connections open now.
func (s *Server) OpenConnections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Count is the number of requests received, valid or not, recorded or not.
func (s *Server) Count() int64 { return s.count.Load() }

// Connections is the number of TCP connections accepted so far, refused
// ones included: each is a client's attempt to connect.
func (s *Server) Connections() int64 { return s.accepted.Load() }

// RefuseConnections makes the server reset every new connection before
// its TLS handshake (true), as an unreachable or overloaded APNs would,
// or accept them again (false). Open connections are left alone.
func (s *Server) RefuseConnections(refuse bool) { s.refuse.Store(refuse) }

// Violations is the number of requests that arrived while their
// connection already had as many streams open as the server allowed
// (Options.Apple only). They were reset, not answered.
func (s *Server) Violations() int64 { return s.violations.Load() }

// AnswerPings(false) makes the server ignore the clients' HTTP/2 PINGs,
// as a connection that died without a reset would (Options.Apple only).
func (s *Server) AnswerPings(answer bool) { s.answerPings.Store(answer) }

// frameConns lists the open connections of an Options.Apple server.
func (s *Server) frameConns() []*frameConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*frameConn
	for c := range s.conns {
		if fc, ok := c.(*frameConn); ok {
			out = append(out, fc)
		}
	}
	return out
}

// GoAway sends GOAWAY with reason on every open connection, as APNs does
// before closing a connection: streams the client opened so far are
// answered, later ones are not processed, and the connection closes once
// the answers are out (Options.Apple only).
func (s *Server) GoAway(reason string) {
	for _, fc := range s.frameConns() {
		fc.goAway(reason)
	}
}

// SilenceConnections makes every open connection ignore whatever the
// client sends from now on, requests and PINGs alike, without closing
// it: a connection that died somewhere on the way (Options.Apple only).
// New connections work.
func (s *Server) SilenceConnections() {
	for _, fc := range s.frameConns() {
		fc.silence()
	}
}

// Requests returns a copy of every request recorded so far, in arrival order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.reqs...)
}

// WaitRequests waits until at least n requests have been recorded and
// returns all of them. On timeout it returns those it has and an error.
func (s *Server) WaitRequests(n int, timeout time.Duration) ([]Request, error) {
	if !s.record {
		return nil, errors.New("fakeapns: requests are not recorded (Options.NoRecord)")
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		s.mu.Lock()
		got, ch := len(s.reqs), s.changed
		s.mu.Unlock()
		if got >= n {
			return s.Requests(), nil
		}
		select {
		case <-ch:
		case <-t.C:
			r := s.Requests()
			return r, fmt.Errorf("fakeapns: %d of %d requests within %v", len(r), n, timeout)
		}
	}
}

// CACertPEM is the CA that signed the server certificate; trust it to
// connect.
func (s *Server) CACertPEM() []byte { return s.ca.CertPEM() }

// WriteCAFile writes CACertPEM to path, for a client configured by file.
func (s *Server) WriteCAFile(path string) error {
	if err := os.WriteFile(path, s.CACertPEM(), 0o644); err != nil {
		return fmt.Errorf("write fakeapns CA %s: %w", path, err)
	}
	return nil
}

// CertPool trusts the server.
func (s *Server) CertPool() *x509.CertPool { return s.ca.CertPool() }

// DropConnections closes every client connection at the TCP level, as a
// network failure or an APNs restart would. The server keeps listening.
func (s *Server) DropConnections() {
	s.mu.Lock()
	conns := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		closeTCP(c)
	}
}

// Close stops the server, cuts all connections and releases delayed
// answers. It is safe to call more than once.
func (s *Server) Close() error {
	s.once.Do(func() {
		close(s.done)
		s.closeErr = s.srv.Close()
		<-s.served
	})
	return s.closeErr
}

// closeTCP closes the socket under TLS, skipping close_notify: a dropped
// connection should look like a network failure, not a polite goodbye.
func closeTCP(c net.Conn) {
	switch x := c.(type) {
	case *tls.Conn:
		c = x.NetConn()
	case *frameConn:
		c = x.netConn()
	}
	c.Close()
}

// bodyBufs holds read buffers one byte larger than APNs' limit, so an
// oversized body shows without reading all of it.
var bodyBufs = sync.Pool{New: func() any { b := make([]byte, maxPayload+1); return &b }}

// readBody returns a right-sized copy of the body, at most maxPayload+1
// bytes of it.
func readBody(r io.Reader) ([]byte, error) {
	bp := bodyBufs.Get().(*[]byte)
	defer bodyBufs.Put(bp)
	buf := *bp
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return bytes.Clone(buf[:n]), nil
}

// header reads a header by its canonical name: the server has already
// canonicalised the keys, and skipping Header.Get's work is measurable
// at benchmark rates.
func header(h http.Header, canonical string) string {
	if v := h[canonical]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	received := time.Now()
	body, err := readBody(r.Body)
	if err != nil {
		// The client went away mid-body; nothing to answer.
		return
	}
	h := r.Header
	req := Request{
		Method:        r.Method,
		Path:          r.URL.Path,
		Topic:         header(h, "Apns-Topic"),
		PushType:      header(h, "Apns-Push-Type"),
		Priority:      header(h, "Apns-Priority"),
		Expiration:    header(h, "Apns-Expiration"),
		Authorization: header(h, "Authorization"),
		CollapseID:    header(h, "Apns-Collapse-Id"),
		ApnsID:        header(h, "Apns-Id"),
		ContentType:   header(h, "Content-Type"),
		Body:          body,
		Received:      received,
		Proto:         r.Proto,
	}
	req.Token, _ = strings.CutPrefix(req.Path, "/3/device/")
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		req.ClientCertSubjectUID = testpki.SubjectUID(r.TLS.PeerCertificates[0])
	}
	ci, _ := r.Context().Value(connKey{}).(*connInfo)
	var fc *frameConn
	if ci != nil {
		req.Conn, fc = ci.id, ci.fc
	}
	if fc != nil {
		req.ClientCertSubjectUID = fc.peerUID
		n := fc.active.Add(1)
		defer fc.active.Add(-1)
		if n > fc.limit.Load() {
			// Over the limit the connection was given: not processed.
			s.violations.Add(1)
			panic(http.ErrAbortHandler)
		}
	}
	s.count.Add(1)
	if s.record {
		req.Header = r.Header.Clone()
		s.mu.Lock()
		s.reqs = append(s.reqs, req)
		close(s.changed)
		s.changed = make(chan struct{})
		s.mu.Unlock()
	}

	resp, ok := validate(r, req, fc != nil && fc.token)
	if ok {
		if f := s.responder.Load(); f != nil {
			resp = (*f)(req)
		}
	}
	if resp.Delay > 0 {
		t := time.NewTimer(resp.Delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			panic(http.ErrAbortHandler)
		case <-s.done:
			// Returning would let net/http send a 200 before Close cuts
			// the connection.
			t.Stop()
			panic(http.ErrAbortHandler)
		}
	}
	if resp.Drop {
		if ci != nil {
			closeTCP(ci.conn)
		}
		panic(http.ErrAbortHandler) // no answer on this stream either
	}
	if resp.Reset {
		panic(http.ErrAbortHandler) // the HTTP/2 server resets the stream
	}
	if fc != nil && fc.token {
		// APNs lets a token connection open more streams once a request
		// on it has been authenticated, and takes that back when one is
		// refused. The SETTINGS go out before the answer.
		switch resp.Status {
		case 0, http.StatusOK:
			fc.setLimit(s.maxStreams)
		case http.StatusForbidden:
			fc.setLimit(1)
		}
	}
	s.answer(w, req, resp)
	if fc != nil && resp.GoAway != "" {
		fc.goAway(resp.GoAway)
	}
}

// validate applies the checks APNs makes before looking at the device.
// token is set for a token connection of an Options.Apple server.
func validate(r *http.Request, req Request, token bool) (Response, bool) {
	bad := func(reason string) (Response, bool) {
		return Response{Status: http.StatusBadRequest, Reason: reason}, false
	}
	switch {
	case r.Method != http.MethodPost:
		return Response{Status: http.StatusMethodNotAllowed, Reason: "MethodNotAllowed"}, false
	case !strings.HasPrefix(req.Path, "/3/device/"):
		return Response{Status: http.StatusNotFound, Reason: "BadPath"}, false
	case token && req.Authorization == "":
		return Response{Status: http.StatusForbidden, Reason: "MissingProviderToken"}, false
	case req.Token == "":
		return bad("MissingDeviceToken")
	case !isHex(req.Token):
		return bad("BadDeviceToken")
	case token && req.Topic == "":
		return bad("MissingTopic")
	case req.Priority != "" && req.Priority != "10" && req.Priority != "5" && req.Priority != "1":
		return bad("BadPriority")
	case req.PushType != "" && !pushTypes[req.PushType]:
		return bad("InvalidPushType")
	case req.Expiration != "" && !isDigits(req.Expiration):
		return bad("BadExpirationDate")
	case len(req.CollapseID) > 64:
		return bad("BadCollapseId")
	case len(req.Body) > maxPayload:
		return Response{Status: http.StatusRequestEntityTooLarge, Reason: "PayloadTooLarge"}, false
	case len(req.Body) == 0:
		return bad("PayloadEmpty")
	}
	return Response{}, true
}

// pushTypes are the values of apns-push-type APNs knows.
var pushTypes = map[string]bool{
	"alert": true, "background": true, "location": true, "voip": true, "complication": true,
	"fileprovider": true, "mdm": true, "liveactivity": true, "pushtotalk": true, "widgets": true, "controls": true,
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// defaultReasons are the reasons Apple most often gives for a status, so
// a responder may set only Status.
var defaultReasons = map[int]string{
	http.StatusBadRequest:            "BadDeviceToken",
	http.StatusForbidden:             "Forbidden",
	http.StatusNotFound:              "BadPath",
	http.StatusMethodNotAllowed:      "MethodNotAllowed",
	http.StatusGone:                  "Unregistered",
	http.StatusRequestEntityTooLarge: "PayloadTooLarge",
	http.StatusTooManyRequests:       "TooManyRequests",
	http.StatusInternalServerError:   "InternalServerError",
	http.StatusServiceUnavailable:    "ServiceUnavailable",
}

type errorBody struct {
	Reason    string `json:"reason"`
	Timestamp int64  `json:"timestamp,omitempty"`
}

func (s *Server) answer(w http.ResponseWriter, req Request, resp Response) {
	h := w.Header()
	id := req.ApnsID
	if id == "" {
		id = newUUID()
	}
	h["Apns-Id"] = []string{id}
	if resp.Status == 0 || resp.Status == http.StatusOK {
		w.WriteHeader(http.StatusOK)
		return
	}
	reason := resp.Reason
	if reason == "" {
		reason = defaultReasons[resp.Status]
	}
	b, err := json.Marshal(errorBody{Reason: reason, Timestamp: resp.Timestamp})
	if err != nil {
		panic(err) // two plain fields cannot fail to encode
	}
	h["Content-Type"] = []string{"application/json; charset=utf-8"}
	h["Content-Length"] = []string{strconv.Itoa(len(b))}
	w.WriteHeader(resp.Status)
	_, _ = w.Write(b) // a client that left cannot be told
}

// newUUID makes the apns-id APNs assigns when the client sent none. It
// needs to be unique in a test, not unpredictable.
func newUUID() string {
	var b [16]byte
	for i := 0; i < 16; i += 8 {
		v := rand.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:], b[10:])
	return strings.ToUpper(string(out[:]))
}
