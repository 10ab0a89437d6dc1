package fakeapns

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sideshow/apns2"
	"github.com/xapsd/xapsd/internal/testutil"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2event is one frame the server sent, as h2conn saw it.
type h2event struct {
	kind    string // "settings", "headers", "rst", "goaway", "pingack", "closed"
	stream  uint32
	value   uint32 // settings: MAX_CONCURRENT_STREAMS (0 if absent); rst: error code
	status  string // headers
	debug   string // goaway
	lastID  uint32 // goaway
	pingTag [8]byte
}

// h2conn is a bare HTTP/2 client that shows every frame of interest, so
// tests can see what the server advertises and do what a careless client
// does (open streams before the server's SETTINGS, ignore limits).
type h2conn struct {
	t    *testing.T
	conn *tls.Conn
	mu   sync.Mutex // writes
	bw   *bufio.Writer
	fr   *http2.Framer
	hb   bytes.Buffer
	enc  *hpack.Encoder
	host string
	ev   chan h2event
}

func dialH2(t *testing.T, s *Server, cert *tls.Certificate) *h2conn {
	t.Helper()
	host := strings.TrimPrefix(s.URL, "https://")
	cfg := &tls.Config{RootCAs: s.CertPool(), NextProtos: []string{"h2"}}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := tls.Dial("tcp", host, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &h2conn{t: t, conn: conn, bw: bufio.NewWriter(conn), host: host, ev: make(chan h2event, 1000)}
	c.fr = http2.NewFramer(c.bw, bufio.NewReader(conn))
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.enc = hpack.NewEncoder(&c.hb)
	c.write(func() error {
		if _, err := c.bw.WriteString(http2.ClientPreface); err != nil {
			return err
		}
		return c.fr.WriteSettings()
	})
	go c.read()
	return c
}

func (c *h2conn) write(f func() error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := f(); err == nil {
		c.bw.Flush()
	}
}

func (c *h2conn) read() {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.ev <- h2event{kind: "closed"}
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			v, _ := f.Value(http2.SettingMaxConcurrentStreams)
			c.ev <- h2event{kind: "settings", value: v}
			c.write(c.fr.WriteSettingsAck)
		case *http2.MetaHeadersFrame:
			c.ev <- h2event{kind: "headers", stream: f.StreamID, status: f.PseudoValue("status")}
		case *http2.RSTStreamFrame:
			c.ev <- h2event{kind: "rst", stream: f.StreamID, value: uint32(f.ErrCode)}
		case *http2.GoAwayFrame:
			c.ev <- h2event{kind: "goaway", lastID: f.LastStreamID, debug: string(f.DebugData())}
		case *http2.PingFrame:
			if f.IsAck() {
				c.ev <- h2event{kind: "pingack", pingTag: f.Data}
			}
		}
	}
}

// post opens stream id with a push request. extra are name, value pairs
// that replace or add headers; the value "-" leaves a header out.
func (c *h2conn) post(id uint32, extra ...string) {
	payload := []byte(`{"aps":{}}`)
	fields := []string{":method", "POST", ":scheme", "https", ":authority", c.host, ":path", "/3/device/" + token1,
		"apns-topic", topic, "apns-push-type", "background", "content-length", strconv.Itoa(len(payload))}
	for i := 0; i < len(extra); i += 2 {
		j := 0
		for j < len(fields) && fields[j] != extra[i] {
			j += 2
		}
		if j == len(fields) {
			fields = append(fields, extra[i], extra[i+1])
		} else {
			fields[j+1] = extra[i+1]
		}
	}
	c.write(func() error {
		c.hb.Reset()
		for i := 0; i < len(fields); i += 2 {
			if fields[i+1] != "-" {
				c.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
			}
		}
		if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hb.Bytes(), EndHeaders: true}); err != nil {
			return err
		}
		return c.fr.WriteData(id, true, payload)
	})
}

func (c *h2conn) ping(tag string) {
	var d [8]byte
	copy(d[:], tag)
	c.write(func() error { return c.fr.WritePing(false, d) })
}

// next waits for the next event of one of kinds, skipping others.
func (c *h2conn) next(wait time.Duration, kinds ...string) (h2event, bool) {
	c.t.Helper()
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case e := <-c.ev:
			for _, k := range kinds {
				if e.kind == k {
					return e, true
				}
			}
		case <-t.C:
			return h2event{}, false
		}
	}
}

func (c *h2conn) must(kinds ...string) h2event {
	c.t.Helper()
	e, ok := c.next(5*time.Second, kinds...)
	if !ok {
		c.t.Fatalf("no %v from the server", kinds)
	}
	return e
}

const bearer = "bearer eyJhbGciOiJFUzI1NiJ9.e30.c2ln"

// A token connection may have one stream until a request on it has been
// authenticated; then the server says so in a new SETTINGS, before the
// answer. A refusal takes it back.
func TestAppleTokenConnectionStreamLimit(t *testing.T) {
	s := StartT(t, Options{Apple: true, MaxConcurrentStreams: 50})
	var mu sync.Mutex
	answer := Response{Delay: 300 * time.Millisecond}
	s.SetResponder(func(Request) Response { mu.Lock(); defer mu.Unlock(); return answer })
	c := dialH2(t, s, nil)
	if e := c.must("settings"); e.value != 1 {
		t.Fatalf("first SETTINGS offers %d streams to a token connection, want 1", e.value)
	}
	// A second stream while the first is open is refused, and counted.
	c.post(1, "authorization", bearer)
	if _, err := s.WaitRequests(1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	c.post(3, "authorization", bearer)
	if e := c.must("rst"); e.stream != 3 {
		t.Fatalf("stream %d reset, want 3", e.stream)
	}
	if e := c.must("settings"); e.value != 50 {
		t.Fatalf("after the first 200 the server offers %d streams, want 50", e.value)
	}
	if e := c.must("headers"); e.stream != 1 || e.status != "200" {
		t.Fatalf("answer %+v", e)
	}
	if s.Violations() != 1 || s.Count() != 1 {
		t.Fatalf("violations %d, count %d; want 1 and 1", s.Violations(), s.Count())
	}
	// Now many at once are fine.
	mu.Lock()
	answer = Response{Delay: 100 * time.Millisecond}
	mu.Unlock()
	for id := uint32(5); id < 5+2*20; id += 2 {
		c.post(id, "authorization", bearer)
	}
	for range 20 {
		if e := c.must("headers", "rst"); e.kind != "headers" || e.status != "200" {
			t.Fatalf("concurrent request: %+v", e)
		}
	}
	if s.Violations() != 1 {
		t.Errorf("violations %d after the limit was raised", s.Violations())
	}
	// A refusal lowers the limit again, once the client has acknowledged it.
	mu.Lock()
	answer = Response{Status: 403, Reason: "InvalidProviderToken"}
	mu.Unlock()
	c.post(45, "authorization", bearer)
	if e := c.must("settings"); e.value != 1 {
		t.Fatalf("after a 403 the server offers %d streams, want 1", e.value)
	}
	if e := c.must("headers"); e.status != "403" {
		t.Fatalf("answer %+v", e)
	}
	testutil.WaitFor(t, "the client's ACK of the lower limit to reach the server", func() bool {
		conns := s.frameConns()
		return len(conns) == 1 && conns[0].limit.Load() == 1
	})
	mu.Lock()
	answer = Response{Status: 403, Reason: "InvalidProviderToken", Delay: 300 * time.Millisecond}
	mu.Unlock()
	c.post(47, "authorization", bearer)
	if _, err := s.WaitRequests(23, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	c.post(49, "authorization", bearer)
	if e := c.must("rst"); e.stream != 49 {
		t.Fatalf("stream %d reset, want 49", e.stream)
	}
	if s.Violations() != 2 {
		t.Errorf("violations %d, want 2", s.Violations())
	}
}

func TestAppleCertificateConnectionGetsTheFullLimit(t *testing.T) {
	s := StartT(t, Options{Apple: true})
	certClient(t, StartT(t, Options{})) // issues pushCert
	cert := pushCert.TLSCertificate()
	c := dialH2(t, s, &cert)
	if e := c.must("settings"); e.value != 1000 {
		t.Fatalf("certificate connection offered %d streams, want 1000", e.value)
	}
	for id := uint32(1); id < 20; id += 2 {
		c.post(id)
	}
	for range 10 {
		if e := c.must("headers", "rst"); e.status != "200" {
			t.Fatalf("answer %+v", e)
		}
	}
	r := s.Requests()
	if len(r) != 10 || r[0].ClientCertSubjectUID != topic || r[0].Conn != 1 {
		t.Errorf("recorded %d, first %+v", len(r), r[0])
	}
	// apns2 with a certificate works as before.
	res, err := certClient(t, s).Push(note(token1))
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("apns2 push: %v %v", res, err)
	}
	if r := s.Requests(); r[len(r)-1].Conn != 2 {
		t.Errorf("apns2's connection numbered %d, want 2", r[len(r)-1].Conn)
	}
}

func TestAppleTokenRequestChecks(t *testing.T) {
	s := StartT(t, Options{Apple: true})
	c := dialH2(t, s, nil)
	c.post(1) // no authorization
	if e := c.must("headers"); e.status != "403" {
		t.Errorf("without authorization: %s", e.status)
	}
	c.post(3, "authorization", bearer, "apns-topic", "-")
	if e := c.must("headers"); e.status != "400" {
		t.Errorf("without topic: %s", e.status)
	}
	reqs := s.Requests()
	if len(reqs) != 2 {
		t.Fatalf("%d recorded", len(reqs))
	}
	// apns2's token client gets through.
	res, err := tokenClient(t, s).Push(note(token1))
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("apns2 token push: %v %v", res, err)
	}
}

// GOAWAY: the streams the client had opened are answered, later ones are
// never processed, and the server closes the connection.
func TestGoAwayAnswersOpenedStreamsAndClosesTheConnection(t *testing.T) {
	s := StartT(t, Options{Apple: true, Responder: func(r Request) Response { return Response{Delay: 300 * time.Millisecond} }})
	certClient(t, StartT(t, Options{}))
	cert := pushCert.TLSCertificate()
	c := dialH2(t, s, &cert)
	c.must("settings")
	c.post(1)
	if _, err := s.WaitRequests(1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	s.GoAway("Shutdown")
	e := c.must("goaway")
	if e.lastID != 1 || e.debug != `{"reason":"Shutdown"}` {
		t.Errorf("GOAWAY last stream %d, debug %q", e.lastID, e.debug)
	}
	c.post(3) // after the GOAWAY: not processed
	if e := c.must("headers"); e.stream != 1 || e.status != "200" {
		t.Errorf("stream opened before GOAWAY: %+v", e)
	}
	c.must("closed")
	if s.Count() != 1 {
		t.Errorf("count %d: a stream after GOAWAY was processed", s.Count())
	}

	// Response.GoAway does the same after one answer.
	s.SetResponder(func(Request) Response { return Response{GoAway: "IdleTimeout"} })
	c = dialH2(t, s, &cert)
	c.post(1)
	for range 2 { // GOAWAY may overtake the answer: its last stream is 1
		switch e := c.must("headers", "goaway"); e.kind {
		case "headers":
			if e.status != "200" {
				t.Fatalf("answer %+v", e)
			}
		case "goaway":
			if e.lastID != 1 || !strings.Contains(e.debug, "IdleTimeout") {
				t.Errorf("GOAWAY %+v", e)
			}
		}
	}
	c.must("closed")
}

func TestApplePingsAndSilence(t *testing.T) {
	s := StartT(t, Options{Apple: true})
	certClient(t, StartT(t, Options{}))
	cert := pushCert.TLSCertificate()
	c := dialH2(t, s, &cert)
	c.must("settings")
	c.ping("one")
	if e := c.must("pingack"); string(e.pingTag[:3]) != "one" {
		t.Errorf("ping ack %q", e.pingTag)
	}
	s.AnswerPings(false)
	c.ping("two")
	if e, ok := c.next(300*time.Millisecond, "pingack"); ok {
		t.Errorf("ping answered while pings are ignored: %q", e.pingTag)
	}
	s.AnswerPings(true)
	c.ping("three")
	c.must("pingack")

	s.SilenceConnections()
	c.ping("four")
	c.post(1)
	if e, ok := c.next(300*time.Millisecond, "pingack", "headers"); ok {
		t.Errorf("a silent connection answered: %+v", e)
	}
	if s.Count() != 0 {
		t.Errorf("count %d on a silent connection", s.Count())
	}
	// A new connection is not silent.
	res, err := certClient(t, s).Push(note(token1))
	if err != nil || res.StatusCode != 200 {
		t.Errorf("new connection: %v %v", res, err)
	}
}

func TestRefusedConnectionsAreCountedAndEndOnRequest(t *testing.T) {
	for _, apple := range []bool{false, true} {
		s := StartT(t, Options{Apple: apple})
		c := certClient(t, s)
		s.RefuseConnections(true)
		for range 3 {
			if _, err := c.Push(note(token1)); err == nil {
				t.Fatalf("apple=%v: push through a refusing server", apple)
			}
			c.CloseIdleConnections()
		}
		if n := s.Connections(); n < 3 {
			t.Errorf("apple=%v: %d connections counted, want at least 3", apple, n)
		}
		s.RefuseConnections(false)
		if res, err := c.Push(note(token1)); err != nil || res.StatusCode != 200 {
			t.Errorf("apple=%v: after refusing: %v %v", apple, res, err)
		}
		if s.Count() != 1 {
			t.Errorf("apple=%v: count %d", apple, s.Count())
		}
	}
}

// The header checks APNs makes, in both modes.
func TestHeaderChecksGiveApplesReasons(t *testing.T) {
	for _, apple := range []bool{false, true} {
		s := StartT(t, Options{Apple: apple})
		c := certClient(t, s)
		for _, tc := range []struct {
			name   string
			edit   func(n *noteEdit)
			reason string
		}{
			{"priority", func(n *noteEdit) { n.priority = 7 }, "BadPriority"},
			{"push type", func(n *noteEdit) { n.pushType = "email" }, "InvalidPushType"},
			{"collapse id", func(n *noteEdit) { n.collapse = strings.Repeat("c", 65) }, "BadCollapseId"},
		} {
			e := noteEdit{priority: 10, pushType: "background", payload: []byte(`{"aps":{}}`)}
			tc.edit(&e)
			n := note(token1)
			n.Priority, n.PushType, n.CollapseID, n.Payload = e.priority, apns2.EPushType(e.pushType), e.collapse, e.payload
			res, err := c.Push(n)
			if err != nil {
				t.Fatalf("apple=%v %s: %v", apple, tc.name, err)
			}
			if res.StatusCode != 400 || res.Reason != tc.reason {
				t.Errorf("apple=%v %s: %d %s, want 400 %s", apple, tc.name, res.StatusCode, res.Reason, tc.reason)
			}
		}
	}
}

type noteEdit struct {
	priority int
	pushType string
	collapse string
	payload  []byte
}
