package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/xapsd/xapsd/internal/testutil"
)

// The tests of clientConn talk to h2peer, a server written frame by frame
// with x/net's Framer and HPACK: each test scripts what the server says
// and reads exactly what the client wrote, which a real server (x/net's,
// fakeapns) would hide or refuse to do (wrong frames, lost answers,
// silence).

// peerFrame is one frame the client wrote, copied out of the Framer's
// buffer, a HEADERS frame with its CONTINUATIONs and decoded.
type peerFrame struct {
	http2.FrameHeader
	Fields       []hpack.HeaderField // HEADERS: the decoded header block
	Block        []byte              // HEADERS: the raw header block
	Fragments    int                 // HEADERS: the frames the block came in
	Data         []byte              // DATA payload; PING data
	Settings     []http2.Setting
	ErrCode      http2.ErrCode // RST_STREAM, GOAWAY
	LastStreamID uint32        // GOAWAY
	Increment    uint32        // WINDOW_UPDATE
	Err          error         // reading failed (io.EOF: the client closed)
}

func (f *peerFrame) String() string {
	if f.Err != nil {
		return "error: " + f.Err.Error()
	}
	return fmt.Sprintf("%v stream=%d flags=%v len=%d", f.Type, f.StreamID, f.Flags, f.Length)
}

func (f *peerFrame) is(t http2.FrameType, flag http2.Flags) bool {
	return f.Err == nil && f.Type == t && f.Flags.Has(flag)
}

// h2peer is the server end of one connection under test.
type h2peer struct {
	t      *testing.T
	conn   net.Conn
	frames chan *peerFrame
	done   chan struct{} // the reader has stopped

	wmu     sync.Mutex // the order of frames and header blocks on the wire
	wfr     *http2.Framer
	written countingWriter
	enc     *hpack.Encoder
	buf     bytes.Buffer

	// What this server allowed the client to send; the reader checks
	// every frame against it.
	fmu          sync.Mutex
	maxFrameSize uint32
	connAllowed  int64
	streamInit   int64
	streamGiven  map[uint32]int64 // WINDOW_UPDATEs per stream
	connSent     int64
	streamSent   map[uint32]int64
	emptyData    map[uint32]int // DATA frames without data or END_STREAM
	lastStreamID uint32
	// What the client allowed the server to send on the connection: 65535
	// and its WINDOW_UPDATEs.
	clientWindow int64
}

func newPeer(t *testing.T, c net.Conn) *h2peer {
	p := &h2peer{
		t: t, conn: c,
		frames:       make(chan *peerFrame, 1<<14),
		done:         make(chan struct{}),
		maxFrameSize: 16384,
		connAllowed:  65535,
		streamInit:   65535,
		streamGiven:  map[uint32]int64{},
		streamSent:   map[uint32]int64{},
		emptyData:    map[uint32]int{},
		clientWindow: 65535,
	}
	p.written.w = c
	p.wfr = http2.NewFramer(&p.written, nil)
	p.wfr.AllowIllegalWrites = true // the garbage tests write frames x/net would refuse
	p.enc = hpack.NewEncoder(&p.buf)
	go p.read()
	return p
}

// read is the server's reader: the preface, then frame after frame into
// p.frames, each checked against what the server allowed.
func (p *h2peer) read() {
	defer close(p.done)
	fail := func(err error) { p.frames <- &peerFrame{Err: err} }
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(p.conn, preface); err != nil {
		fail(fmt.Errorf("reading the preface: %w", err))
		return
	}
	if string(preface) != http2.ClientPreface {
		fail(fmt.Errorf("the client's preface is %q", preface))
		return
	}
	fr := http2.NewFramer(nil, p.conn)
	dec := hpack.NewDecoder(4096, nil)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			fail(err)
			return
		}
		pf, err := p.take(fr, dec, f)
		if err != nil {
			fail(err)
			return
		}
		p.frames <- pf
	}
}

// take copies f out of the Framer and checks it.
func (p *h2peer) take(fr *http2.Framer, dec *hpack.Decoder, f http2.Frame) (*peerFrame, error) {
	pf := &peerFrame{FrameHeader: f.Header()}
	p.fmu.Lock()
	maxFrame := p.maxFrameSize
	p.fmu.Unlock()
	if pf.Length > maxFrame {
		return nil, fmt.Errorf("the client sent a %v frame of %d bytes; the server allows %d", pf.Type, pf.Length, maxFrame)
	}
	switch f := f.(type) {
	case *http2.HeadersFrame:
		if f.StreamID%2 == 0 {
			return nil, fmt.Errorf("the client opened stream %d, an even id", f.StreamID)
		}
		p.fmu.Lock()
		last := p.lastStreamID
		p.lastStreamID = max(last, f.StreamID)
		p.fmu.Unlock()
		if f.StreamID <= last {
			return nil, fmt.Errorf("the client sent HEADERS on stream %d after opening stream %d", f.StreamID, last)
		}
		pf.Block = append(pf.Block, f.HeaderBlockFragment()...)
		pf.Fragments = 1
		for ended := f.HeadersEnded(); !ended; {
			next, err := fr.ReadFrame()
			if err != nil {
				return nil, fmt.Errorf("reading a CONTINUATION: %w", err)
			}
			c, ok := next.(*http2.ContinuationFrame)
			if !ok || c.StreamID != f.StreamID {
				return nil, fmt.Errorf("the client sent %v after HEADERS without END_HEADERS", next.Header())
			}
			if c.Length > maxFrame {
				return nil, fmt.Errorf("the client sent a CONTINUATION of %d bytes; the server allows %d", c.Length, maxFrame)
			}
			pf.Block = append(pf.Block, c.HeaderBlockFragment()...)
			pf.Fragments++
			ended = c.HeadersEnded()
		}
		fields, err := dec.DecodeFull(pf.Block)
		if err != nil {
			return nil, fmt.Errorf("decoding the header block of stream %d: %w", f.StreamID, err)
		}
		pf.Fields = fields
	case *http2.DataFrame:
		pf.Data = bytes.Clone(f.Data())
		p.fmu.Lock()
		p.connSent += int64(f.Length)
		p.streamSent[f.StreamID] += int64(f.Length)
		connOK := p.connSent <= p.connAllowed
		allowed := p.streamInit + p.streamGiven[f.StreamID]
		streamOK := p.streamSent[f.StreamID] <= allowed
		sent, connAllowed, streamSent := p.connSent, p.connAllowed, p.streamSent[f.StreamID]
		if f.Length == 0 && !f.StreamEnded() {
			p.emptyData[f.StreamID]++
		}
		empties := p.emptyData[f.StreamID]
		p.fmu.Unlock()
		if empties > 10 {
			return nil, fmt.Errorf("the client sent %d empty DATA frames on stream %d (spinning on a closed window?)", empties, f.StreamID)
		}
		if !connOK {
			return nil, fmt.Errorf("the client sent %d DATA bytes on the connection; the server allowed %d", sent, connAllowed)
		}
		if !streamOK {
			return nil, fmt.Errorf("the client sent %d DATA bytes on stream %d; the server allowed %d", streamSent, f.StreamID, allowed)
		}
	case *http2.SettingsFrame:
		f.ForeachSetting(func(s http2.Setting) error {
			pf.Settings = append(pf.Settings, s)
			return nil
		})
	case *http2.PingFrame:
		pf.Data = bytes.Clone(f.Data[:])
	case *http2.RSTStreamFrame:
		pf.ErrCode = f.ErrCode
	case *http2.GoAwayFrame:
		pf.ErrCode, pf.LastStreamID = f.ErrCode, f.LastStreamID
	case *http2.WindowUpdateFrame:
		pf.Increment = f.Increment
		if f.StreamID == 0 {
			p.fmu.Lock()
			p.clientWindow += int64(f.Increment)
			p.fmu.Unlock()
		}
	}
	return pf, nil
}

// clientGranted is how many DATA bytes the client has let the server
// send on the connection so far.
func (p *h2peer) clientGranted() int64 {
	p.fmu.Lock()
	defer p.fmu.Unlock()
	return p.clientWindow
}

// next is the client's next frame; the test fails if none comes within
// testutil.Patience or the client broke the protocol.
func (p *h2peer) next() *peerFrame {
	p.t.Helper()
	t := time.NewTimer(testutil.Patience)
	defer t.Stop()
	select {
	case f := <-p.frames:
		if f.Err != nil {
			p.t.Fatalf("server: %v", f.Err)
		}
		return f
	case <-t.C:
		p.t.Fatalf("server: no frame from the client within %v", testutil.Patience)
	}
	return nil
}

// expect skips frames until one matches; what names it in the failure.
func (p *h2peer) expect(what string, match func(*peerFrame) bool) *peerFrame {
	p.t.Helper()
	deadline := time.Now().Add(testutil.Patience)
	for {
		t := time.NewTimer(time.Until(deadline))
		select {
		case f := <-p.frames:
			t.Stop()
			if f.Err != nil {
				p.t.Fatalf("server: waiting for %s: %v", what, f.Err)
			}
			if match(f) {
				return f
			}
		case <-t.C:
			p.t.Fatalf("server: no %s from the client within %v", what, testutil.Patience)
		}
	}
}

// expectClosed reads (and drops) frames until the client closes the
// connection, and fails the test unless it does within Patience.
func (p *h2peer) expectClosed() {
	p.t.Helper()
	deadline := time.Now().Add(testutil.Patience)
	for {
		t := time.NewTimer(time.Until(deadline))
		select {
		case f := <-p.frames:
			t.Stop()
			if f.Err != nil {
				if errors.Is(f.Err, io.EOF) || errors.Is(f.Err, net.ErrClosed) || isConnReset(f.Err) {
					return
				}
				p.t.Fatalf("server: waiting for the client to close: %v", f.Err)
			}
		case <-t.C:
			p.t.Fatalf("server: the client did not close the connection within %v", testutil.Patience)
		}
	}
}

func isConnReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset")
}

// peerRequest is a request as the server read it.
type peerRequest struct {
	id     uint32
	fields []hpack.HeaderField
	block  []byte
	body   []byte
	data   []int // the sizes of its DATA frames
	ended  bool
	// endOnHeaders: END_STREAM came on the HEADERS frame.
	endOnHeaders bool
}

func (r *peerRequest) get(name string) string {
	for _, f := range r.fields {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

func (r *peerRequest) field(name string) (hpack.HeaderField, bool) {
	for _, f := range r.fields {
		if f.Name == name {
			return f, true
		}
	}
	return hpack.HeaderField{}, false
}

// readRequests reads frames until n requests have ended (END_STREAM),
// and returns them in the order they opened. WINDOW_UPDATE, SETTINGS
// and PING are dropped; any other frame fails the test.
func (p *h2peer) readRequests(n int) []*peerRequest {
	p.t.Helper()
	var order []*peerRequest
	byID := map[uint32]*peerRequest{}
	for ended := 0; ended < n; {
		f := p.next()
		switch {
		case f.Type == http2.FrameHeaders:
			if byID[f.StreamID] != nil {
				p.t.Fatalf("server: a second HEADERS on stream %d", f.StreamID)
			}
			r := &peerRequest{id: f.StreamID, fields: f.Fields, block: f.Block}
			byID[f.StreamID] = r
			order = append(order, r)
			if f.Flags.Has(http2.FlagHeadersEndStream) {
				r.ended, r.endOnHeaders = true, true
				ended++
			}
		case f.Type == http2.FrameData:
			r := byID[f.StreamID]
			if r == nil || r.ended {
				p.t.Fatalf("server: DATA on stream %d, which is not open", f.StreamID)
			}
			r.body = append(r.body, f.Data...)
			r.data = append(r.data, len(f.Data))
			if f.Flags.Has(http2.FlagDataEndStream) {
				r.ended = true
				ended++
			}
		case f.Type == http2.FrameWindowUpdate, f.Type == http2.FrameSettings, f.Type == http2.FramePing:
		default:
			p.t.Fatalf("server: unexpected %v while reading requests", f)
		}
	}
	return order
}

// readRequest reads one whole request.
func (p *h2peer) readRequest() *peerRequest {
	p.t.Helper()
	return p.readRequests(1)[0]
}

// write writes frames under the write lock; a failed write fails the test.
func (p *h2peer) write(fn func(fr *http2.Framer) error) {
	p.t.Helper()
	if err := p.tryWrite(fn); err != nil {
		p.t.Fatalf("server: writing: %v", err)
	}
}

// countingWriter counts what the server wrote (under h2peer.wmu).
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

// bytesWritten is how many bytes the server has written so far.
func (p *h2peer) bytesWritten() int64 {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return p.written.n
}

// tryWrite writes frames and returns what failed: for writes that race
// the client closing.
func (p *h2peer) tryWrite(fn func(fr *http2.Framer) error) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return fn(p.wfr)
}

// block encodes a header block of name, value pairs (call under wmu: the
// encoder's table follows the order of blocks on the wire).
func (p *h2peer) blockLocked(pairs ...string) []byte {
	p.buf.Reset()
	for i := 0; i+1 < len(pairs); i += 2 {
		p.enc.WriteField(hpack.HeaderField{Name: pairs[i], Value: pairs[i+1]})
	}
	return bytes.Clone(p.buf.Bytes())
}

// writeHeaders writes a header block on stream id, in fragments of at
// most frag bytes (0: one frame).
func (p *h2peer) writeHeaders(id uint32, endStream bool, frag int, pairs ...string) {
	p.t.Helper()
	p.write(func(fr *http2.Framer) error {
		block := p.blockLocked(pairs...)
		if frag <= 0 {
			frag = len(block)
		}
		first := block[:min(frag, len(block))]
		rest := block[len(first):]
		err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: endStream, EndHeaders: len(rest) == 0})
		for err == nil && len(rest) > 0 {
			n := min(frag, len(rest))
			err = fr.WriteContinuation(id, n == len(rest), rest[:n])
			rest = rest[n:]
		}
		return err
	})
}

// carriesOn checks that the connection still works after what a test
// did to it: the next push on it is answered.
func (p *h2peer) carriesOn(t *testing.T, cc *clientConn) {
	t.Helper()
	res := goRoundTrip(cc, h2push(t, "next"))
	r := p.readRequest()
	p.respond(r.id, 200, "")
	answered(t, res, 200)
}

// respond answers stream id with status, body (none if empty) and extra
// header pairs.
func (p *h2peer) respond(id uint32, status int, body string, pairs ...string) {
	p.t.Helper()
	p.writeHeaders(id, body == "", 0, append([]string{":status", strconv.Itoa(status)}, pairs...)...)
	// The client allows the default 16384 bytes a frame.
	for b := []byte(body); len(b) > 0; {
		n := min(len(b), 16384)
		p.write(func(fr *http2.Framer) error { return fr.WriteData(id, n == len(b), b[:n]) })
		b = b[n:]
	}
}

// settings sends SETTINGS, after taking their limits for the checks of
// what the client sends (a window the client may use must be counted
// before the client can see it).
func (p *h2peer) settings(ss ...http2.Setting) {
	p.t.Helper()
	p.fmu.Lock()
	for _, s := range ss {
		switch s.ID {
		case http2.SettingMaxFrameSize:
			p.maxFrameSize = s.Val
		case http2.SettingInitialWindowSize:
			p.streamInit = int64(s.Val)
		}
	}
	p.fmu.Unlock()
	p.write(func(fr *http2.Framer) error { return fr.WriteSettings(ss...) })
}

// windowUpdate gives the client n more bytes on stream id (0: the
// connection).
func (p *h2peer) windowUpdate(id, n uint32) {
	p.t.Helper()
	p.fmu.Lock()
	if id == 0 {
		p.connAllowed += int64(n)
	} else {
		p.streamGiven[id] += int64(n)
	}
	p.fmu.Unlock()
	p.write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(id, n) })
}

// handshake reads the client's SETTINGS, sends the server's (ss) and the
// ACK of the client's, and waits for the client's ACK of the server's, so
// that the client has applied them when the test goes on.
func (p *h2peer) handshake(ss ...http2.Setting) *peerFrame {
	p.t.Helper()
	first := p.next()
	if first.Type != http2.FrameSettings || first.Flags.Has(http2.FlagSettingsAck) {
		p.t.Fatalf("server: the client's first frame is %v, not SETTINGS", first)
	}
	p.settings(ss...)
	p.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
	p.expectSettingsAck()
	return first
}

func (p *h2peer) expectSettingsAck() {
	p.t.Helper()
	p.expect("SETTINGS ACK", func(f *peerFrame) bool {
		if f.Type == http2.FrameHeaders || f.Type == http2.FrameData {
			p.t.Fatalf("server: %v before the client acknowledged the server's SETTINGS", f)
		}
		return f.is(http2.FrameSettings, http2.FlagSettingsAck)
	})
}

// pingRoundTrip sends a PING and waits for its ACK: everything the client
// did with the frames before it has been done.
func (p *h2peer) pingRoundTrip(data [8]byte) {
	p.t.Helper()
	p.write(func(fr *http2.Framer) error { return fr.WritePing(false, data) })
	p.expect("PING ACK", func(f *peerFrame) bool {
		return f.is(http2.FramePing, http2.FlagPingAck) && bytes.Equal(f.Data, data[:])
	})
}

// startH2 connects a clientConn with options o to a new h2peer over
// loopback TCP.
func startH2(t *testing.T, o connOptions) (*clientConn, *h2peer) {
	t.Helper()
	return startH2Over(t, o, nil)
}

// tcpPair is the two ends of a new loopback TCP connection; the caller
// closes them.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	return client, server
}

// startH2Over is startH2 with the client's end of the connection passed
// through wrap first (nil: as it is).
func startH2Over(t *testing.T, o connOptions, wrap func(net.Conn) net.Conn) (*clientConn, *h2peer) {
	t.Helper()
	client, server := tcpPair(t)
	p := newPeer(t, server)
	if wrap != nil {
		client = wrap(client)
	}
	cc, err := newClientConn(client, o)
	if err != nil {
		t.Fatalf("newClientConn: %v", err)
	}
	t.Cleanup(func() {
		closeWithin(t, cc)
		server.Close()
		client.Close()
		select {
		case <-p.done:
		case <-time.After(testutil.Patience):
			t.Errorf("the server's reader did not stop")
		}
	})
	return cc, p
}

// stallConn is the client's end of a connection whose peer has stopped
// reading: once stalled, a Write blocks until the connection is closed,
// as a TCP write does once the socket's buffers are full. It counts what
// the client has read, so a test knows that a frame has reached it.
type stallConn struct {
	net.Conn
	closed    chan struct{}
	closeOnce sync.Once

	mu      sync.Mutex
	stall   bool
	stalled int // writes blocked now
	read    int64
}

func newStallConn(c net.Conn) *stallConn { return &stallConn{Conn: c, closed: make(chan struct{})} }

func (c *stallConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	if c.stall {
		c.stalled++
		c.mu.Unlock()
		<-c.closed
		return 0, net.ErrClosed
	}
	c.mu.Unlock()
	return c.Conn.Write(b)
}

func (c *stallConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.mu.Lock()
	c.read += int64(n)
	c.mu.Unlock()
	return n, err
}

func (c *stallConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func (c *stallConn) stallWrites() {
	c.mu.Lock()
	c.stall = true
	c.mu.Unlock()
}

func (c *stallConn) stalledWrites() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stalled
}

func (c *stallConn) bytesRead() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.read
}

// closeWithin closes cc and fails the test if Close does not return
// within Patience (a deadlock would hang the whole run otherwise).
func closeWithin(t *testing.T, cc *clientConn) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		cc.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(testutil.Patience):
		t.Errorf("clientConn.Close did not return within %v (deadlock?)", testutil.Patience)
	}
}

// stateWithin is cc.State(), failing the test if it does not return
// within Patience.
func stateWithin(t *testing.T, cc *clientConn) connState {
	t.Helper()
	ch := make(chan connState, 1)
	go func() { ch <- cc.State() }()
	select {
	case st := <-ch:
		return st
	case <-time.After(testutil.Patience):
		t.Fatalf("clientConn.State did not return within %v (deadlock?)", testutil.Patience)
	}
	return connState{}
}

// rtResult is what RoundTrip returned, with the body read.
type rtResult struct {
	resp *http.Response
	body []byte
	err  error
}

// goRoundTrip runs cc.RoundTrip(req) and hands over its result.
func goRoundTrip(cc *clientConn, req *http.Request) chan rtResult {
	ch := make(chan rtResult, 1)
	go func() {
		resp, err := cc.RoundTrip(req)
		r := rtResult{resp: resp, err: err}
		if err == nil && resp.Body != nil {
			r.body, r.err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		ch <- r
	}()
	return ch
}

// result waits for a RoundTrip's result.
func result(t *testing.T, ch chan rtResult) rtResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(testutil.Patience):
		t.Fatalf("RoundTrip did not return within %v", testutil.Patience)
	}
	return rtResult{}
}

// answered waits for a RoundTrip that must succeed with status.
func answered(t *testing.T, ch chan rtResult, status int) rtResult {
	t.Helper()
	r := result(t, ch)
	if r.err != nil {
		t.Fatalf("RoundTrip failed: %v", r.err)
	}
	if r.resp.StatusCode != status {
		t.Fatalf("status %d, want %d", r.resp.StatusCode, status)
	}
	return r
}

// failed waits for a RoundTrip that must fail, and returns its error.
func failed(t *testing.T, ch chan rtResult) error {
	t.Helper()
	r := result(t, ch)
	if r.err == nil {
		t.Fatalf("RoundTrip succeeded (status %d), want an error", r.resp.StatusCode)
	}
	return r.err
}

// pending says whether a RoundTrip has not returned yet.
func pending(ch chan rtResult) bool {
	select {
	case r := <-ch:
		ch <- r // put it back for whoever reads it next
		return false
	default:
		return true
	}
}

const testPayload = `{"aps":{"account-id":"0715A26B-CA09-4730-A419-793000CA982E"}}`

// pushReq is a push as package apns sends it, to device token.
func pushReq(t *testing.T, ctx context.Context, token, body string) *http.Request {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://api.push.apple.com/3/device/"+token, r)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	req.Header.Set("apns-topic", testTopic)
	req.Header.Set("apns-push-type", "background")
	req.Header.Set("apns-priority", "5")
	req.Header.Set("apns-expiration", "1767225600")
	req.Header.Set("authorization", "bearer eyJhbGciOiJFUzI1NiIsImtpZCI6IkFCQzEyM0RFRkcifQ.e30.c2ln")
	return req
}

func h2push(t *testing.T, token string) *http.Request {
	return pushReq(t, context.Background(), token, testPayload)
}

// ---------------------------------------------------------------------
// The connection's start.

func TestH2StartsWithPrefaceSettingsAndConnectionWindow(t *testing.T) {
	_, p := startH2(t, connOptions{})
	// The reader checked the preface before the first frame.
	f := p.next()
	if f.Type != http2.FrameSettings || f.Flags.Has(http2.FlagSettingsAck) {
		t.Fatalf("first frame %v, want SETTINGS", f)
	}
	got := map[http2.SettingID]uint32{}
	for _, s := range f.Settings {
		got[s.ID] = s.Val
	}
	if v, ok := got[http2.SettingEnablePush]; !ok || v != 0 {
		t.Errorf("SETTINGS_ENABLE_PUSH %d (sent %v), want 0", v, ok)
	}
	v, ok := got[http2.SettingInitialWindowSize]
	if !ok || v <= 65535 {
		t.Errorf("SETTINGS_INITIAL_WINDOW_SIZE %d (sent %v), want one above the default 65535", v, ok)
	}
	w := p.next()
	if w.Type != http2.FrameWindowUpdate || w.StreamID != 0 || w.Increment == 0 {
		t.Fatalf("second frame %v, want a WINDOW_UPDATE of the connection", w)
	}
	t.Logf("client SETTINGS %v; connection window raised by %d", f.Settings, w.Increment)
}

func TestH2AcknowledgesServerSettings(t *testing.T) {
	_, p := startH2(t, connOptions{})
	p.next() // the client's SETTINGS
	p.settings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 10})
	p.expectSettingsAck()
	// And again for a later SETTINGS frame.
	p.settings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 16})
	p.expectSettingsAck()
}

func TestH2DoesNotWaitForServerSettingsToSendARequest(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	res := goRoundTrip(cc, h2push(t, "aa"))
	// The server says nothing at all before the request arrives.
	r := p.readRequest()
	p.settings()
	p.respond(r.id, 200, "")
	answered(t, res, 200)
}

// ---------------------------------------------------------------------
// What a request looks like on the wire.

func TestH2RequestHeadersArePseudoHeadersThenLowerCaseFields(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake()
	req := pushReq(t, context.Background(), "0a1b2c", testPayload)
	req.URL.RawQuery = "x=1"
	// Headers that mean something only in HTTP/1 must not be sent.
	req.Header.Set("Connection", "keep-alive")
	req.Header.Set("Keep-Alive", "timeout=5")
	req.Header.Set("Proxy-Connection", "keep-alive")
	req.Header.Set("Transfer-Encoding", "chunked")
	req.Header.Set("Upgrade", "h2c")
	req.Header["X-Custom-Header"] = []string{"one", "two"}
	res := goRoundTrip(cc, req)
	r := p.readRequest()
	p.respond(r.id, 200, "")
	answered(t, res, 200)

	if r.id != 1 {
		t.Errorf("first request on stream %d, want 1", r.id)
	}
	want := map[string]string{
		":method": "POST", ":scheme": "https", ":authority": "api.push.apple.com",
		":path": "/3/device/0a1b2c?x=1", "apns-topic": testTopic, "apns-push-type": "background",
		"apns-priority": "5", "apns-expiration": "1767225600", "content-type": "application/json; charset=utf-8",
		"authorization": req.Header.Get("Authorization"), "content-length": strconv.Itoa(len(testPayload)),
	}
	seen := map[string]int{}
	regular := false
	var custom []string
	for _, f := range r.fields {
		seen[f.Name]++
		if f.Name != strings.ToLower(f.Name) {
			t.Errorf("field %q is not lower case", f.Name)
		}
		if strings.HasPrefix(f.Name, ":") {
			if regular {
				t.Errorf("pseudo-header %s after a regular field", f.Name)
			}
		} else {
			regular = true
		}
		if f.Name == "x-custom-header" {
			custom = append(custom, f.Value)
		}
		switch f.Name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host":
			t.Errorf("sent the connection-specific field %s: %q", f.Name, f.Value)
		}
	}
	for name, v := range want {
		if got := r.get(name); got != v || seen[name] != 1 {
			t.Errorf("%s = %q (%d times), want %q once", name, got, seen[name], v)
		}
	}
	if strings.Join(custom, ",") != "one,two" {
		t.Errorf("x-custom-header values %q, want one and two", custom)
	}
	if len(r.fields) != len(want)+2 {
		t.Errorf("fields %v, want only %d", r.fields, len(want)+2)
	}
}

func TestH2AuthorityComesFromRequestHost(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake()
	req := h2push(t, "aa")
	req.Host = "api.sandbox.push.apple.com:443"
	res := goRoundTrip(cc, req)
	r := p.readRequest()
	p.respond(r.id, 200, "")
	answered(t, res, 200)
	if got := r.get(":authority"); got != "api.sandbox.push.apple.com:443" {
		t.Errorf(":authority %q, want req.Host", got)
	}
}

func TestH2PathIsSentNeverIndexed(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake()
	var reqs []*peerRequest
	for _, token := range []string{"0a1b2c3d", "4e5f6a7b", "8c9d0e1f"} {
		res := goRoundTrip(cc, h2push(t, token))
		r := p.readRequest()
		p.respond(r.id, 200, "")
		answered(t, res, 200)
		reqs = append(reqs, r)
	}
	for _, r := range reqs {
		f, ok := r.field(":path")
		if !ok || !f.Sensitive {
			t.Errorf("stream %d: :path %+v, want it sent never indexed (HPACK 0001xxxx)", r.id, f)
		}
	}
	// The constant fields may be indexed: the third request's header
	// block should be much smaller than the first's.
	t.Logf("header blocks: %d, %d, %d bytes", len(reqs[0].block), len(reqs[1].block), len(reqs[2].block))
}

func TestH2RequestBodyIsSentInDataFramesEndingTheStream(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake()
	res := goRoundTrip(cc, h2push(t, "aa"))
	r := p.readRequest()
	p.respond(r.id, 200, "")
	answered(t, res, 200)
	if r.endOnHeaders {
		t.Fatal("END_STREAM on the HEADERS of a request with a body")
	}
	if string(r.body) != testPayload {
		t.Errorf("body %q, want %q", r.body, testPayload)
	}
}

func TestH2BodilessRequestEndsTheStreamOnItsHeaders(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake()
	req := pushReq(t, context.Background(), "aa", "")
	req.Method = http.MethodGet
	res := goRoundTrip(cc, req)
	r := p.readRequest()
	p.respond(r.id, 200, "")
	answered(t, res, 200)
	if !r.endOnHeaders || len(r.data) != 0 {
		t.Errorf("a request without body: END_STREAM on HEADERS %v, DATA frames %v", r.endOnHeaders, r.data)
	}
	if r.get(":method") != "GET" {
		t.Errorf(":method %q", r.get(":method"))
	}
	if _, ok := r.field("content-length"); ok {
		t.Errorf("content-length %q sent without a body", r.get("content-length"))
	}
}

func TestH2BodyRespectsMaxFrameSize(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 16384})
	body := strings.Repeat("x", 40000) // within the default windows, over one frame
	res := goRoundTrip(cc, pushReq(t, context.Background(), "aa", body))
	// The reader fails the test on a frame over 16384 bytes.
	r := p.readRequest()
	p.respond(r.id, 200, "")
	answered(t, res, 200)
	if string(r.body) != body {
		t.Fatalf("body of %d bytes arrived as %d", len(body), len(r.body))
	}
	if len(r.data) < 3 {
		t.Errorf("DATA frames %v, want at least 3 for 40000 bytes", r.data)
	}
}

func TestH2BodyWaitsForStreamWindowUpdates(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
	body := strings.Repeat("0123456789", 3) + "abcde" // 35 bytes
	res := goRoundTrip(cc, pushReq(t, context.Background(), "aa", body))
	h := p.expect("HEADERS", func(f *peerFrame) bool { return f.Type == http2.FrameHeaders })
	var got []byte
	for n := 0; len(got) < len(body); n++ {
		// The reader fails the test if the client sends beyond the
		// window; the PING's answer shows it has had its chance to.
		var sent int
		for sent < 10 && len(got) < len(body) {
			f := p.expect("DATA", func(f *peerFrame) bool { return f.Type == http2.FrameData })
			got = append(got, f.Data...)
			sent += len(f.Data)
		}
		p.pingRoundTrip([8]byte{byte(n)})
		if len(got) < len(body) {
			p.windowUpdate(h.StreamID, 10)
		}
	}
	p.respond(h.StreamID, 200, "")
	answered(t, res, 200)
	if string(got) != body {
		t.Fatalf("body %q, want %q", got, body)
	}
}

func TestH2BodyWaitsForConnectionWindowUpdates(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake(
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20},
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1000},
	)
	// 20 pushes of 4 KiB need more than the connection's first 65535.
	const n, size = 20, 4096
	var results []chan rtResult
	for i := range n {
		results = append(results, goRoundTrip(cc, pushReq(t, context.Background(), fmt.Sprint(i), strings.Repeat("p", size))))
	}
	var received int
	ended := map[uint32]bool{}
	for received < 65535 {
		f := p.expect("DATA", func(f *peerFrame) bool { return f.Type == http2.FrameData })
		received += len(f.Data)
		if f.Flags.Has(http2.FlagDataEndStream) {
			ended[f.StreamID] = true
		}
	}
	// The window is spent: nothing more may come (the reader checks).
	p.pingRoundTrip([8]byte{1})
	p.windowUpdate(0, n*size)
	for received < n*size {
		f := p.expect("DATA", func(f *peerFrame) bool { return f.Type == http2.FrameData })
		received += len(f.Data)
		if f.Flags.Has(http2.FlagDataEndStream) {
			ended[f.StreamID] = true
		}
	}
	if len(ended) != n {
		t.Fatalf("%d streams ended, want %d", len(ended), n)
	}
	for id := range ended {
		p.respond(id, 200, "")
	}
	for _, res := range results {
		answered(t, res, 200)
	}
}

func TestH2InitialWindowSizeChangeAppliesToOpenAndNewStreams(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
	body := strings.Repeat("b", 50)
	res := goRoundTrip(cc, pushReq(t, context.Background(), "aa", body))
	h := p.expect("HEADERS", func(f *peerFrame) bool { return f.Type == http2.FrameHeaders })
	f := p.expect("DATA", func(f *peerFrame) bool { return f.Type == http2.FrameData })
	got := len(f.Data)
	// The open stream's window grows by the difference (RFC 9113 6.9.2):
	// the rest comes without a WINDOW_UPDATE.
	p.settings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1000})
	for got < len(body) {
		f := p.expect("DATA", func(f *peerFrame) bool { return f.Type == http2.FrameData })
		got += len(f.Data)
	}
	p.respond(h.StreamID, 200, "")
	answered(t, res, 200)

	// A new stream starts with the new window.
	res = goRoundTrip(cc, pushReq(t, context.Background(), "bb", strings.Repeat("c", 500)))
	r := p.readRequest()
	p.respond(r.id, 200, "")
	answered(t, res, 200)
	if len(r.body) != 500 {
		t.Fatalf("second body %d bytes", len(r.body))
	}
}

func TestH2LargeRequestHeadersAreSplitIntoContinuations(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake()
	req := h2push(t, "aa")
	big := strings.Repeat("v", 40000)
	req.Header.Set("X-Big", big)
	res := goRoundTrip(cc, req)
	r := p.readRequest() // the reader fails on a frame over 16384 bytes
	p.respond(r.id, 200, "")
	answered(t, res, 200)
	if r.get("x-big") != big {
		t.Fatalf("x-big arrived with %d bytes", len(r.get("x-big")))
	}
}

func TestH2HonoursServerHeaderTableSize(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake()
	// A first request fills the table with the constant fields.
	res := goRoundTrip(cc, h2push(t, "aa"))
	r := p.readRequest()
	p.respond(r.id, 200, "")
	answered(t, res, 200)
	// The server shrinks its table to nothing; the next header block must
	// begin with the size update (RFC 7541 4.2) and index nothing new.
	p.settings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})
	p.expectSettingsAck()
	res = goRoundTrip(cc, h2push(t, "bb"))
	r = p.readRequest()
	p.respond(r.id, 200, "")
	answered(t, res, 200)
	if len(r.block) == 0 || r.block[0] != 0x20 {
		t.Fatalf("header block after SETTINGS_HEADER_TABLE_SIZE 0 starts with %#x, want 0x20 (size update to 0)", r.block[:1])
	}
}

// ---------------------------------------------------------------------
// Answers.

func TestH2EmptyAnswerHasZeroContentLength(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake()
	res := goRoundTrip(cc, h2push(t, "aa"))
	r := p.readRequest()
	p.respond(r.id, 200, "", "apns-id", "EC1BF194-B3B2-424A-89A9-5A918A6E6B5F", "apns-unique-id", "3a1b")
	a := answered(t, res, 200)
	if a.resp.ContentLength != 0 || len(a.body) != 0 {
		t.Errorf("ContentLength %d, body %q; want 0 and none", a.resp.ContentLength, a.body)
	}
	if got := a.resp.Header["Apns-Id"]; len(got) != 1 || got[0] != "EC1BF194-B3B2-424A-89A9-5A918A6E6B5F" {
		t.Errorf(`Header["Apns-Id"] = %q`, got)
	}
	if got := a.resp.Header.Get("Apns-Unique-Id"); got != "3a1b" {
		t.Errorf("Apns-Unique-Id %q", got)
	}
	if a.resp.Body == nil {
		t.Error("Body is nil")
	}
}

func TestH2AnswerBodyIsReadWhole(t *testing.T) {
	const reason = `{"reason":"BadDeviceToken"}`
	cases := []struct {
		name  string
		write func(p *h2peer, id uint32)
	}{
		{"with content-length", func(p *h2peer, id uint32) {
			p.respond(id, 400, reason, "content-type", "application/json", "content-length", strconv.Itoa(len(reason)))
		}},
		{"without content-length", func(p *h2peer, id uint32) {
			p.respond(id, 400, reason, "content-type", "application/json")
		}},
		{"in several DATA frames and an empty last one", func(p *h2peer, id uint32) {
			p.writeHeaders(id, false, 0, ":status", "400", "content-type", "application/json")
			p.write(func(fr *http2.Framer) error {
				for _, piece := range []string{reason[:5], reason[5:17], reason[17:]} {
					if err := fr.WriteData(id, false, []byte(piece)); err != nil {
						return err
					}
				}
				return fr.WriteData(id, true, nil)
			})
		}},
		{"padded", func(p *h2peer, id uint32) {
			p.writeHeaders(id, false, 0, ":status", "400")
			p.write(func(fr *http2.Framer) error { return fr.WriteDataPadded(id, true, []byte(reason), make([]byte, 17)) })
		}},
		{"with trailers", func(p *h2peer, id uint32) {
			p.writeHeaders(id, false, 0, ":status", "400")
			p.write(func(fr *http2.Framer) error { return fr.WriteData(id, false, []byte(reason)) })
			p.writeHeaders(id, true, 0, "x-trailer", "t")
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cc, p := startH2(t, connOptions{})
			p.handshake()
			res := goRoundTrip(cc, h2push(t, "aa"))
			r := p.readRequest()
			c.write(p, r.id)
			a := answered(t, res, 400)
			if string(a.body) != reason {
				t.Errorf("body %q, want %q", a.body, reason)
			}
			if a.resp.ContentLength != int64(len(reason)) {
				t.Errorf("ContentLength %d, want %d", a.resp.ContentLength, len(reason))
			}
			p.carriesOn(t, cc)
		})
	}
}

func TestH2AnswerHeadersSplitOverContinuationFrames(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake()
	res := goRoundTrip(cc, h2push(t, "aa"))
	r := p.readRequest()
	long := strings.Repeat("z", 300)
	p.writeHeaders(r.id, true, 7, ":status", "200", "apns-id", "EC1BF194-B3B2-424A-89A9-5A918A6E6B5F", "x-long", long)
	a := answered(t, res, 200)
	if a.resp.Header.Get("Apns-Id") != "EC1BF194-B3B2-424A-89A9-5A918A6E6B5F" || a.resp.Header.Get("X-Long") != long {
		t.Errorf("headers %v", a.resp.Header)
	}
}

func TestH2InformationalAnswerIsSkipped(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake()
	res := goRoundTrip(cc, h2push(t, "aa"))
	r := p.readRequest()
	p.writeHeaders(r.id, false, 0, ":status", "100")
	p.respond(r.id, 200, "")
	answered(t, res, 200)
}

func TestH2ConcurrentRequestsGetTheirOwnAnswers(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1000})
	const n = 200
	results := make([]chan rtResult, n)
	for i := range n {
		results[i] = goRoundTrip(cc, pushReq(t, context.Background(), fmt.Sprintf("tok%03d", i), fmt.Sprintf(`{"n":%d}`, i)))
	}
	reqs := p.readRequests(n)
	// Answer in a shuffled order, odd ones with a reason naming them.
	rnd := rand.New(rand.NewPCG(1, 2))
	rnd.Shuffle(len(reqs), func(i, j int) { reqs[i], reqs[j] = reqs[j], reqs[i] })
	for _, r := range reqs {
		token := strings.TrimPrefix(r.get(":path"), "/3/device/")
		i, err := strconv.Atoi(strings.TrimPrefix(token, "tok"))
		if err != nil {
			t.Fatalf("stream %d: path %q", r.id, r.get(":path"))
		}
		if want := fmt.Sprintf(`{"n":%d}`, i); string(r.body) != want {
			t.Errorf("stream %d for %s carries %q, want %q", r.id, token, r.body, want)
		}
		if i%2 == 1 {
			p.respond(r.id, 410, `{"reason":"`+token+`"}`, "apns-id", token)
		} else {
			p.respond(r.id, 200, "", "apns-id", token)
		}
	}
	for i, res := range results {
		token := fmt.Sprintf("tok%03d", i)
		a := result(t, res)
		if a.err != nil {
			t.Errorf("%s: %v", token, a.err)
			continue
		}
		if got := a.resp.Header.Get("Apns-Id"); got != token {
			t.Errorf("%s got the answer for %s", token, got)
		}
		if i%2 == 1 && (a.resp.StatusCode != 410 || string(a.body) != `{"reason":"`+token+`"}`) {
			t.Errorf("%s: %d %q", token, a.resp.StatusCode, a.body)
		}
		if i%2 == 0 && (a.resp.StatusCode != 200 || len(a.body) != 0) {
			t.Errorf("%s: %d %q", token, a.resp.StatusCode, a.body)
		}
	}
}

// ---------------------------------------------------------------------
// SETTINGS.

func TestH2MaxConcurrentStreamsComesFromServerSettings(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	if got := cc.State().MaxConcurrentStreams; got != 100 {
		t.Errorf("before the server's SETTINGS: %d, want 100", got)
	}
	p.handshake(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 7})
	if got := cc.State().MaxConcurrentStreams; got != 7 {
		t.Errorf("after SETTINGS of 7 (acknowledged): %d", got)
	}
	p.settings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1000})
	p.expectSettingsAck()
	if got := cc.State().MaxConcurrentStreams; got != 1000 {
		t.Errorf("after SETTINGS of 1000 (acknowledged): %d", got)
	}
}

// A server's limit of exactly 100 is its limit: a later SETTINGS frame
// that does not name it keeps it.
func TestH2LaterSettingsKeepTheServersStreamLimit(t *testing.T) {
	for _, limit := range []uint32{1, 100, 500} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			cc, p := startH2(t, connOptions{})
			p.handshake(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: limit})
			p.settings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 16})
			p.expectSettingsAck()
			if got := cc.State().MaxConcurrentStreams; got != limit {
				t.Errorf("the server said %d, then SETTINGS without a limit: State says %d", limit, got)
			}
		})
	}
}

func TestH2WaitsForAStreamUnderTheServersLimit(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 2})
	var results []chan rtResult
	for i := range 3 {
		results = append(results, goRoundTrip(cc, h2push(t, fmt.Sprint(i))))
	}
	reqs := p.readRequests(2)
	// The third must not be opened while two are: the PING's answer
	// comes after anything the client sent before it.
	p.pingRoundTrip([8]byte{9})
	p.respond(reqs[0].id, 200, "")
	third := p.readRequest()
	p.respond(reqs[1].id, 200, "")
	p.respond(third.id, 200, "")
	for _, res := range results {
		answered(t, res, 200)
	}
}

// ---------------------------------------------------------------------
// RST_STREAM and GOAWAY.

func TestH2ResetStreamFailsOnlyThatRequest(t *testing.T) {
	for _, code := range []http2.ErrCode{http2.ErrCodeRefusedStream, http2.ErrCodeInternal, http2.ErrCodeCancel} {
		t.Run(code.String(), func(t *testing.T) {
			cc, p := startH2(t, connOptions{})
			p.handshake(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1000})
			byPath := map[string]chan rtResult{}
			for _, tok := range []string{"a", "b", "c"} {
				byPath["/3/device/"+tok] = goRoundTrip(cc, h2push(t, tok))
			}
			reqs := p.readRequests(3)
			victim := reqs[1]
			p.write(func(fr *http2.Framer) error { return fr.WriteRSTStream(victim.id, code) })
			err := failed(t, byPath[victim.get(":path")])
			var se http2.StreamError
			if !errors.As(err, &se) || se.Code != code || se.StreamID != victim.id {
				t.Errorf("error %v (%T), want http2.StreamError{StreamID: %d, Code: %v}", err, err, victim.id, code)
			}
			for _, r := range reqs {
				if r != victim {
					if !pending(byPath[r.get(":path")]) {
						t.Fatalf("stream %d ended with the reset of stream %d", r.id, victim.id)
					}
					p.respond(r.id, 200, "")
				}
			}
			for _, r := range reqs {
				if r != victim {
					answered(t, byPath[r.get(":path")], 200)
				}
			}
			if st := cc.State(); st.Closed || st.Closing {
				t.Errorf("state %+v after a reset stream", st)
			}
			res := goRoundTrip(cc, h2push(t, "after"))
			r := p.readRequest()
			p.respond(r.id, 200, "")
			answered(t, res, 200)
		})
	}
}

func TestH2GoAwayLetsEarlierStreamsFinishAndFailsLaterOnes(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1000})
	byToken := map[string]chan rtResult{}
	for _, tok := range []string{"a", "b", "c", "d"} {
		byToken[tok] = goRoundTrip(cc, h2push(t, tok))
	}
	reqs := p.readRequests(4)
	last := reqs[1].id
	p.write(func(fr *http2.Framer) error { return fr.WriteGoAway(last, http2.ErrCodeNo, []byte("shutting down")) })
	tokenOf := func(r *peerRequest) string { return strings.TrimPrefix(r.get(":path"), "/3/device/") }
	// Streams above last fail at once, before the others are answered.
	for _, r := range reqs[2:] {
		err := failed(t, byToken[tokenOf(r)])
		t.Logf("stream %d above GOAWAY's %d: %v", r.id, last, err)
	}
	if st := stateWithin(t, cc); !st.Closing || st.Closed {
		t.Errorf("state %+v after GOAWAY with streams left, want Closing", st)
	}
	if err := failed(t, goRoundTrip(cc, h2push(t, "new"))); err == nil {
		t.Error("a new request after GOAWAY did not fail")
	}
	for _, r := range reqs[:2] {
		if !pending(byToken[tokenOf(r)]) {
			t.Fatalf("stream %d (under GOAWAY's last) ended before its answer", r.id)
		}
		p.respond(r.id, 200, "", "apns-id", tokenOf(r))
	}
	for _, r := range reqs[:2] {
		a := answered(t, byToken[tokenOf(r)], 200)
		if a.resp.Header.Get("Apns-Id") != tokenOf(r) {
			t.Errorf("stream %d got %q's answer", r.id, a.resp.Header.Get("Apns-Id"))
		}
	}
	testutil.WaitFor(t, "the connection to close after its last stream", func() bool { return cc.State().Closed })
	p.expectClosed()
}

func TestH2GoAwayWithNoStreamsClosesAtOnce(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake()
	res := goRoundTrip(cc, h2push(t, "a"))
	r := p.readRequest()
	p.respond(r.id, 200, "")
	answered(t, res, 200)
	p.write(func(fr *http2.Framer) error { return fr.WriteGoAway(r.id, http2.ErrCodeNo, nil) })
	testutil.WaitFor(t, "the connection to close", func() bool { return cc.State().Closed })
	failed(t, goRoundTrip(cc, h2push(t, "b")))
	p.expectClosed()
}

// ---------------------------------------------------------------------
// PING, health and idleness.

func TestH2AnswersServerPing(t *testing.T) {
	_, p := startH2(t, connOptions{})
	p.handshake()
	p.pingRoundTrip([8]byte{'x', 'a', 'p', 's', 'd', 0, 1, 2})
	p.pingRoundTrip([8]byte{0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0xfa, 0xf9, 0xf8})
}

func TestH2UnansweredPingClosesASilentConnection(t *testing.T) {
	cc, p := startH2(t, connOptions{ReadIdleTimeout: 50 * time.Millisecond, PingTimeout: 100 * time.Millisecond})
	p.handshake()
	res := goRoundTrip(cc, h2push(t, "aa"))
	// The server goes silent (it reads, answers nothing); the client
	// must ask.
	p.expect("the client's PING", func(f *peerFrame) bool {
		return f.Type == http2.FramePing && !f.Flags.Has(http2.FlagPingAck)
	})
	failed(t, res)
	testutil.WaitFor(t, "the connection to be closed", func() bool { return cc.State().Closed })
	failed(t, goRoundTrip(cc, h2push(t, "bb")))
	p.expectClosed()
}

func TestH2AnsweredPingsKeepTheConnectionOpen(t *testing.T) {
	const pingTimeout = 250 * time.Millisecond
	cc, p := startH2(t, connOptions{ReadIdleTimeout: 20 * time.Millisecond, PingTimeout: pingTimeout})
	p.handshake()
	res := goRoundTrip(cc, h2push(t, "aa"))
	// Answer the client's PINGs until they have spanned several
	// PingTimeouts.
	var id uint32
	start := time.Now()
	pings := 0
	for id == 0 || pings < 5 || time.Since(start) < 3*pingTimeout {
		f := p.next()
		switch {
		case f.Type == http2.FrameHeaders:
			id = f.StreamID
		case f.Type == http2.FramePing && !f.Flags.Has(http2.FlagPingAck):
			var data [8]byte
			copy(data[:], f.Data)
			p.write(func(fr *http2.Framer) error { return fr.WritePing(true, data) })
			pings++
		}
	}
	if st := cc.State(); st.Closed || st.Closing {
		t.Fatalf("state %+v after %d answered PINGs", st, pings)
	}
	if !pending(res) {
		t.Fatalf("the request ended while its connection answered PINGs: %+v", <-res)
	}
	p.respond(id, 200, "")
	answered(t, res, 200)
}

func TestH2IdleConnectionClosesItself(t *testing.T) {
	t.Run("never used", func(t *testing.T) {
		cc, p := startH2(t, connOptions{IdleTimeout: 50 * time.Millisecond})
		testutil.WaitFor(t, "the idle connection to close", func() bool { return cc.State().Closed })
		p.expectClosed()
	})
	t.Run("after an answer", func(t *testing.T) {
		cc, p := startH2(t, connOptions{IdleTimeout: 150 * time.Millisecond})
		p.handshake()
		res := goRoundTrip(cc, h2push(t, "aa"))
		r := p.readRequest()
		p.respond(r.id, 200, "")
		answered(t, res, 200)
		testutil.WaitFor(t, "the idle connection to close", func() bool { return cc.State().Closed })
		failed(t, goRoundTrip(cc, h2push(t, "bb")))
		p.expectClosed()
	})
}

func TestH2RequestInFlightKeepsTheConnectionFromIdling(t *testing.T) {
	const idle = 150 * time.Millisecond
	busy, p := startH2(t, connOptions{IdleTimeout: idle})
	p.handshake()
	res := goRoundTrip(busy, h2push(t, "aa"))
	r := p.readRequest()
	// A second connection with the same timeout, opened after the request
	// started, shows when the busy one would have closed.
	witness, wp := startH2(t, connOptions{IdleTimeout: idle})
	wp.handshake()
	testutil.WaitFor(t, "the idle witness to close", func() bool { return witness.State().Closed })
	p.pingRoundTrip([8]byte{7}) // and give the busy one's timer time to act
	p.pingRoundTrip([8]byte{8})
	if st := busy.State(); st.Closed || st.Closing {
		t.Fatalf("the connection with a request in flight: %+v", st)
	}
	p.respond(r.id, 200, "")
	answered(t, res, 200)
	testutil.WaitFor(t, "the connection to close once idle", func() bool { return busy.State().Closed })
}

// ---------------------------------------------------------------------
// Cancelling, closing, breaking.

func TestH2CancelledRequestReturnsAndResetsItsStream(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res := goRoundTrip(cc, pushReq(t, ctx, "aa", testPayload))
	r := p.readRequest()
	cancel()
	if err := failed(t, res); !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
	rst := p.expect("RST_STREAM", func(f *peerFrame) bool { return f.Type == http2.FrameRSTStream })
	if rst.StreamID != r.id || rst.ErrCode != http2.ErrCodeCancel {
		t.Errorf("%v code %v, want RST_STREAM CANCEL on stream %d", rst, rst.ErrCode, r.id)
	}
	if st := cc.State(); st.Closed || st.Closing {
		t.Fatalf("state %+v after a cancelled request", st)
	}
	p.carriesOn(t, cc)
}

func TestH2RequestPastItsDeadlineFails(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	res := goRoundTrip(cc, pushReq(t, ctx, "aa", testPayload))
	r := p.readRequest()
	if err := failed(t, res); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v, want context.DeadlineExceeded", err)
	}
	rst := p.expect("RST_STREAM", func(f *peerFrame) bool { return f.Type == http2.FrameRSTStream })
	if rst.StreamID != r.id || rst.ErrCode != http2.ErrCodeCancel {
		t.Errorf("%v code %v, want RST_STREAM CANCEL on stream %d", rst, rst.ErrCode, r.id)
	}
}

func TestH2CancelledWhileWaitingForWindowReturns(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res := goRoundTrip(cc, pushReq(t, ctx, "aa", strings.Repeat("w", 100)))
	p.expect("DATA", func(f *peerFrame) bool { return f.Type == http2.FrameData })
	cancel()
	if err := failed(t, res); !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
	p.expect("RST_STREAM", func(f *peerFrame) bool { return f.Type == http2.FrameRSTStream })
}

func TestH2CancelledWhileWaitingForAStreamReturns(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1})
	first := goRoundTrip(cc, h2push(t, "aa"))
	r := p.readRequest()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	second := goRoundTrip(cc, pushReq(t, ctx, "bb", testPayload))
	cancel()
	if err := failed(t, second); !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
	p.respond(r.id, 200, "")
	answered(t, first, 200)
	// The slot the cancelled one waited for is free for the next.
	third := goRoundTrip(cc, h2push(t, "cc"))
	r3 := p.readRequest()
	if r3.get(":path") != "/3/device/cc" {
		t.Errorf("next stream carries %q", r3.get(":path"))
	}
	p.respond(r3.id, 200, "")
	answered(t, third, 200)
}

// The client must decode the header block of an answer to a stream it
// has reset: the server's HPACK table changed with it.
func TestH2LateAnswerToCancelledStreamKeepsHeaderTableInStep(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res := goRoundTrip(cc, pushReq(t, ctx, "aa", testPayload))
	r := p.readRequest()
	cancel()
	failed(t, res)
	p.expect("RST_STREAM", func(f *peerFrame) bool { return f.Type == http2.FrameRSTStream })
	// The late answer adds "apns-id: late" to the table; the next answer
	// refers to that entry.
	p.respond(r.id, 400, `{"reason":"BadDeviceToken"}`, "apns-id", "late-answer-id")
	res = goRoundTrip(cc, h2push(t, "bb"))
	r2 := p.readRequest()
	p.respond(r2.id, 200, "", "apns-id", "late-answer-id")
	a := answered(t, res, 200)
	if a.resp.Header.Get("Apns-Id") != "late-answer-id" {
		t.Errorf("apns-id %q", a.resp.Header.Get("Apns-Id"))
	}
}

func TestH2ServerClosingTCPFailsRequestsInFlight(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake()
	var results []chan rtResult
	for i := range 3 {
		results = append(results, goRoundTrip(cc, h2push(t, fmt.Sprint(i))))
	}
	p.readRequests(3)
	p.conn.Close()
	for _, res := range results {
		failed(t, res)
	}
	testutil.WaitFor(t, "State().Closed", func() bool { return cc.State().Closed })
	failed(t, goRoundTrip(cc, h2push(t, "after")))
}

func TestH2CloseFailsRequestsInFlightAndLaterOnes(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
	// Two wait for their answers, one for window to send its body.
	var results []chan rtResult
	for i := range 2 {
		req := pushReq(t, context.Background(), fmt.Sprint(i), "")
		results = append(results, goRoundTrip(cc, req))
	}
	results = append(results, goRoundTrip(cc, h2push(t, "body")))
	for headers, data := 0, 0; headers < 3 || data < 1; {
		switch p.next().Type {
		case http2.FrameHeaders:
			headers++
		case http2.FrameData:
			data++
		}
	}
	closeWithin(t, cc)
	for _, res := range results {
		failed(t, res)
	}
	if st := cc.State(); !st.Closed {
		t.Errorf("state %+v after Close", st)
	}
	failed(t, goRoundTrip(cc, h2push(t, "after")))
	p.expectClosed()
}

// ---------------------------------------------------------------------
// A server that breaks the protocol.

func TestH2ProtocolErrorsFailRequestsWithoutPanic(t *testing.T) {
	big := bytes.Repeat([]byte("r"), 16000)
	cases := []struct {
		name string
		// closes: the error is the connection's: it must close.
		closes bool
		write  func(p *h2peer, id uint32) error
	}{
		{"DATA on stream 0", true, func(p *h2peer, id uint32) error {
			return p.tryWrite(func(fr *http2.Framer) error { return fr.WriteRawFrame(http2.FrameData, 0, 0, []byte("x")) })
		}},
		{"HEADERS on stream 0", true, func(p *h2peer, id uint32) error {
			return p.tryWrite(func(fr *http2.Framer) error {
				return fr.WriteRawFrame(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 0, p.blockLocked(":status", "200"))
			})
		}},
		{"RST_STREAM on stream 0", true, func(p *h2peer, id uint32) error {
			return p.tryWrite(func(fr *http2.Framer) error {
				return fr.WriteRawFrame(http2.FrameRSTStream, 0, 0, []byte{0, 0, 0, 2})
			})
		}},
		{"PUSH_PROMISE", true, func(p *h2peer, id uint32) error {
			return p.tryWrite(func(fr *http2.Framer) error {
				return fr.WritePushPromise(http2.PushPromiseParam{StreamID: id, PromiseID: 2, EndHeaders: true,
					BlockFragment: p.blockLocked(":method", "GET", ":scheme", "https", ":authority", "x", ":path", "/")})
			})
		}},
		{"undecodable header block", true, func(p *h2peer, id uint32) error {
			return p.tryWrite(func(fr *http2.Framer) error {
				return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, EndStream: true, BlockFragment: []byte{0xff, 0xff, 0xff, 0xff, 0xff}})
			})
		}},
		{"CONTINUATION without HEADERS", true, func(p *h2peer, id uint32) error {
			return p.tryWrite(func(fr *http2.Framer) error { return fr.WriteContinuation(id, true, p.blockLocked(":status", "200")) })
		}},
		{"SETTINGS with a bad frame size", true, func(p *h2peer, id uint32) error {
			return p.tryWrite(func(fr *http2.Framer) error {
				return fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 100})
			})
		}},
		{"frame over 16384 bytes", true, func(p *h2peer, id uint32) error {
			p.writeHeaders(id, false, 0, ":status", "200")
			return p.tryWrite(func(fr *http2.Framer) error { return fr.WriteData(id, true, bytes.Repeat([]byte("y"), 20000)) })
		}},
		{"answer without :status", false, func(p *h2peer, id uint32) error {
			p.writeHeaders(id, true, 0, "apns-id", "x")
			return nil
		}},
		{"answer with a bad :status", false, func(p *h2peer, id uint32) error {
			p.writeHeaders(id, true, 0, ":status", "two hundred")
			return nil
		}},
		{"DATA before HEADERS", false, func(p *h2peer, id uint32) error {
			return p.tryWrite(func(fr *http2.Framer) error { return fr.WriteData(id, true, []byte("x")) })
		}},
		{"answer body over 64 KiB", false, func(p *h2peer, id uint32) error {
			p.writeHeaders(id, false, 0, ":status", "400")
			return p.tryWrite(func(fr *http2.Framer) error {
				for range 5 {
					if err := fr.WriteData(id, false, big); err != nil {
						return err
					}
				}
				return fr.WriteData(id, true, big)
			})
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cc, p := startH2(t, connOptions{})
			p.handshake()
			res := goRoundTrip(cc, h2push(t, "aa"))
			r := p.readRequest()
			if err := c.write(p, r.id); err != nil {
				t.Logf("server's write: %v", err)
			}
			err := failed(t, res)
			t.Logf("RoundTrip: %v", err)
			if c.closes {
				testutil.WaitFor(t, "the connection to close", func() bool { return cc.State().Closed })
				failed(t, goRoundTrip(cc, h2push(t, "bb")))
				return
			}
			// A stream's error: the connection goes on.
			if st := cc.State(); st.Closed || st.Closing {
				t.Fatalf("state %+v after a stream's error", st)
			}
			res = goRoundTrip(cc, h2push(t, "bb"))
			r = p.expect("the next request", func(f *peerFrame) bool {
				return f.Type == http2.FrameHeaders && f.StreamID > r.id
			}).asRequest()
			p.respond(r.id, 200, "")
			answered(t, res, 200)
		})
	}
}

func (f *peerFrame) asRequest() *peerRequest {
	return &peerRequest{id: f.StreamID, fields: f.Fields, block: f.Block}
}

// ---------------------------------------------------------------------
// Long lives: windows and stream ids that run out.

// Answers' bodies spend the connection's receive window; a client that
// never gives it back stalls once its window's worth of 400 reasons has
// come.
func TestH2ReceiveWindowIsRefunded(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	first := p.handshake(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1000})
	streamWindow := int64(65535)
	for _, s := range first.Settings {
		if s.ID == http2.SettingInitialWindowSize {
			streamWindow = int64(s.Val)
		}
	}
	window := p.clientGranted()
	t.Logf("client's windows: connection %d, stream %d", window, streamWindow)
	if window > 64<<20 {
		t.Skipf("SKIPPED: the client's connection window %d is too large to spend in a test", window)
	}
	body := strings.Repeat("r", 60000)
	if int64(len(body)) > streamWindow {
		t.Fatalf("stream window %d below one answer", streamWindow)
	}
	var spent int64
	for n := 0; spent < 3*window; n++ {
		res := goRoundTrip(cc, h2push(t, fmt.Sprint(n)))
		r := p.readRequest()
		testutil.WaitFor(t, fmt.Sprintf("the client to grant window for answer %d (%d bytes spent)", n, spent), func() bool {
			return spent+int64(len(body)) <= p.clientGranted()
		})
		p.respond(r.id, 400, body)
		spent += int64(len(body))
		a := answered(t, res, 400)
		if len(a.body) != len(body) {
			t.Fatalf("answer %d: %d bytes", n, len(a.body))
		}
	}
	t.Logf("sent %d bytes of answers; the client granted %d in all", spent, p.clientGranted())
}

// Stream ids end at 2^31-1: a connection that has used the last one must
// take no new request (the pool then opens another), never send an
// invalid id, and close.
func TestH2StreamIDsRunningOutStopNewRequests(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake()
	cc.mu.Lock()
	cc.nextID = 1<<31 - 3 // the last two odd ids
	cc.mu.Unlock()
	p.fmu.Lock()
	p.lastStreamID = 1<<31 - 5
	p.fmu.Unlock()
	for range 2 {
		res := goRoundTrip(cc, h2push(t, "aa"))
		r := p.readRequest()
		p.respond(r.id, 200, "")
		answered(t, res, 200)
	}
	st := stateWithin(t, cc)
	if !st.Closing && !st.Closed {
		t.Errorf("state %+v after stream id %d, want Closing", st, 1<<31-1)
	}
	// The pool sends a push again elsewhere when its connection says
	// Closing or Closed; the server must not see a third HEADERS (an id
	// past 2^31-1 reads as a small one, which the server's reader refuses).
	t.Logf("a request after the last id: %v", failed(t, goRoundTrip(cc, h2push(t, "bb"))))
	if st := stateWithin(t, cc); !st.Closing && !st.Closed {
		t.Errorf("state %+v", st)
	}
	p.expectClosed()
}

// ---------------------------------------------------------------------
// Locks: a server that stops reading, SETTINGS and resets under load.

// A peer that stops reading blocks the client's writes; the health
// check must still find the connection dead (x/net's PING does not wait
// for the write lock, so it did).
func TestH2PingClosesAConnectionWhoseWritesAreStuck(t *testing.T) {
	var sc *stallConn
	cc, p := startH2Over(t, connOptions{ReadIdleTimeout: 50 * time.Millisecond, PingTimeout: 100 * time.Millisecond},
		func(c net.Conn) net.Conn { sc = newStallConn(c); return sc })
	p.handshake()
	sc.stallWrites()
	res := goRoundTrip(cc, h2push(t, "aa"))
	testutil.WaitFor(t, "the request's write to be stuck", func() bool { return sc.stalledWrites() > 0 })
	failed(t, res)
	if st := stateWithin(t, cc); !st.Closed {
		t.Errorf("state %+v after its request failed", st)
	}
}

// State and Close must answer while a write is stuck, whatever the
// reader is doing meanwhile (here: a SETTINGS it must acknowledge).
func TestH2CloseReturnsWhileWritesAreStuck(t *testing.T) {
	var sc *stallConn
	cc, p := startH2Over(t, connOptions{}, func(c net.Conn) net.Conn { sc = newStallConn(c); return sc })
	p.handshake()
	sc.stallWrites()
	res := goRoundTrip(cc, h2push(t, "aa"))
	testutil.WaitFor(t, "the request's write to be stuck", func() bool { return sc.stalledWrites() > 0 })
	p.settings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 4096})
	sent := p.bytesWritten()
	testutil.WaitFor(t, "the client to read the SETTINGS", func() bool { return sc.bytesRead() >= sent })
	stateWithin(t, cc)
	closeWithin(t, cc)
	failed(t, res)
}

// Requests write their HEADERS while the reader answers SETTINGS and
// resets streams: neither may wait for the other forever.
func TestH2ReaderAndWritersDoNotDeadlock(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1000})
	const workers, each = 8, 150
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				req := pushReq(t, context.Background(), fmt.Sprintf("w%di%d", w, i), testPayload)
				resp, err := cc.RoundTrip(req)
				if err != nil {
					var se http2.StreamError
					if !strings.Contains(err.Error(), "status") && !errors.As(err, &se) {
						errs <- err
					}
					continue
				}
				resp.Body.Close()
			}
		}()
	}
	allDone := make(chan struct{})
	go func() { wg.Wait(); close(allDone) }()
	n := 0
	for n < workers*each {
		f := p.next()
		if f.Type == http2.FrameData && len(f.Data) > 0 {
			p.windowUpdate(0, uint32(len(f.Data))) // 1200 bodies need more than 65535
		}
		if !(f.Type == http2.FrameHeaders && f.Flags.Has(http2.FlagHeadersEndStream) || f.Type == http2.FrameData && f.Flags.Has(http2.FlagDataEndStream)) {
			continue
		}
		n++
		switch n % 3 {
		case 0:
			p.respond(f.StreamID, 200, "")
		case 1:
			// An invalid answer: the client resets the stream.
			p.writeHeaders(f.StreamID, true, 0, ":status", "bad")
		case 2:
			p.settings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 4096})
			p.respond(f.StreamID, 200, "")
		}
	}
	select {
	case <-allDone:
	case <-time.After(testutil.Patience):
		t.Fatal("the requests did not all return (deadlock?)")
	}
	close(errs)
	for err := range errs {
		t.Errorf("unexpected error: %v", err)
	}
}

// ---------------------------------------------------------------------
// Robustness.

// Random frames, mostly plausible and some garbage, from the server
// never panic the client (a panic in its reader ends the whole test
// binary), and every request returns once the server has hung up.
func TestH2RandomServerFramesNeverPanic(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 7))
	rounds := 60
	if testing.Short() {
		rounds = 15
	}
	var answers, failures int
	for round := range rounds {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			cc, p := startH2(t, connOptions{ReadIdleTimeout: 200 * time.Millisecond, PingTimeout: 200 * time.Millisecond})
			p.handshake(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1000})
			var results []chan rtResult
			for i := range 4 {
				results = append(results, goRoundTrip(cc, h2push(t, fmt.Sprint(i))))
			}
			p.readRequests(4)
			ids := []uint32{1, 1, 3, 3, 5, 7, 0, 2, 9, 1<<31 - 1}
			for range 40 {
				if err := p.tryWrite(func(fr *http2.Framer) error { return randomFrame(rnd, p, fr, ids[rnd.IntN(len(ids))]) }); err != nil {
					break // the client hung up
				}
			}
			p.conn.Close()
			for _, res := range results {
				if r := result(t, res); r.err == nil {
					answers++
				} else {
					failures++
				}
			}
			testutil.WaitFor(t, "the connection to close", func() bool { return cc.State().Closed })
		})
	}
	t.Logf("%d requests answered, %d failed", answers, failures)
}

// randomFrame writes one random frame on stream id (under p.wmu).
func randomFrame(rnd *rand.Rand, p *h2peer, fr *http2.Framer, id uint32) error {
	bytesOf := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		return b
	}
	switch rnd.IntN(10) {
	case 0, 1: // an answer's headers, maybe split
		block := p.blockLocked(":status", fmt.Sprint(100+rnd.IntN(500)), "apns-id", fmt.Sprint(rnd.Int()), "content-length", fmt.Sprint(rnd.IntN(40)))
		if rnd.IntN(3) > 0 || len(block) < 2 {
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, EndStream: rnd.IntN(2) == 0, BlockFragment: block})
		}
		cut := 1 + rnd.IntN(len(block)-1)
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndStream: rnd.IntN(2) == 0, BlockFragment: block[:cut]}); err != nil {
			return err
		}
		return fr.WriteContinuation(id, true, block[cut:])
	case 2, 3:
		return fr.WriteData(id, rnd.IntN(2) == 0, bytes.Repeat([]byte{'d'}, rnd.IntN(200)))
	case 4:
		return fr.WriteRSTStream(id, http2.ErrCode(rnd.IntN(14)))
	case 5:
		return fr.WriteWindowUpdate(id, uint32(rnd.IntN(1<<20)))
	case 6:
		ids := []http2.SettingID{http2.SettingHeaderTableSize, http2.SettingMaxConcurrentStreams, http2.SettingInitialWindowSize, http2.SettingMaxFrameSize, http2.SettingEnablePush, 0x99}
		return fr.WriteSettings(http2.Setting{ID: ids[rnd.IntN(len(ids))], Val: rnd.Uint32() >> rnd.IntN(32)})
	case 7:
		if rnd.IntN(2) == 0 {
			return fr.WritePing(rnd.IntN(2) == 0, [8]byte(bytesOf(8)))
		}
		return fr.WriteGoAway(id, http2.ErrCode(rnd.IntN(14)), bytesOf(rnd.IntN(10)))
	default: // anything at all
		return fr.WriteRawFrame(http2.FrameType(rnd.IntN(11)), http2.Flags(rnd.Uint32()), id, bytesOf(rnd.IntN(40)))
	}
}

// FuzzH2ServerBytes: whatever bytes follow the server's SETTINGS, the
// client neither panics nor leaves a request hanging once the server
// hangs up.
func FuzzH2ServerBytes(f *testing.F) {
	frame := func(typ http2.FrameType, flags http2.Flags, id uint32, payload ...byte) []byte {
		var b bytes.Buffer
		http2.NewFramer(&b, nil).WriteRawFrame(typ, flags, id, payload)
		return b.Bytes()
	}
	ok := append(frame(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 1, 0x88), // :status 200
		frame(http2.FrameData, http2.FlagDataEndStream, 1, '{', '}')...)
	f.Add(ok)
	f.Add(frame(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersEndStream, 1, 0x88))
	f.Add(frame(http2.FrameHeaders, 0, 1, 0x88))
	f.Add(frame(http2.FrameData, 0, 0, 'x'))
	f.Add(frame(http2.FrameGoAway, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
	f.Add(frame(http2.FrameRSTStream, 0, 1, 0, 0, 0, 7))
	f.Add(frame(http2.FramePushPromise, http2.FlagPushPromiseEndHeaders, 1, 0, 0, 0, 2, 0x82))
	f.Add(frame(http2.FrameSettings, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff))
	f.Add(frame(http2.FrameWindowUpdate, 0, 0, 0x7f, 0xff, 0xff, 0xff))
	f.Add([]byte{0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		cc, p := startH2(t, connOptions{})
		p.handshake()
		res := goRoundTrip(cc, h2push(t, "aa"))
		p.readRequest()
		p.tryWrite(func(*http2.Framer) error {
			_, err := p.conn.Write(data)
			return err
		})
		p.conn.Close()
		result(t, res)
		testutil.WaitFor(t, "the connection to close", func() bool { return cc.State().Closed })
	})
}

// Every header block must decode, with x/net's decoder, to exactly the
// fields the request had, however the fields repeat, change and evict
// each other from the table, with the server changing the table's size
// between requests and the requests encoded concurrently.
func TestH2HeaderBlocksDecodeToTheirFieldsAcrossTableChanges(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1000})
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 11))
	pick := func(vals ...string) string { return vals[rnd.IntN(len(vals))] }
	bearer := func(n int) string { return "bearer " + strings.Repeat(string(rune('a'+n)), 150+n*40) }
	const batches, perBatch = 20, 20
	for b := range batches {
		switch b {
		case 5:
			p.settings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 256})
			p.expectSettingsAck()
		case 10:
			p.settings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})
			p.expectSettingsAck()
		case 12:
			p.settings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 4096})
			p.expectSettingsAck()
		}
		want := map[string][]string{} // apns-id -> the fields sent, sorted
		var results []chan rtResult
		for i := range perBatch {
			id := fmt.Sprintf("%08X-%04X-%04d", rnd.Uint32(), b, i)
			req := pushReq(t, context.Background(), fmt.Sprintf("%064x", rnd.Uint64()), testPayload)
			req.Header.Set("apns-topic", pick(testTopic, "com.example.a", "com.example.b", "x"))
			req.Header.Set("apns-expiration", fmt.Sprint(1767225600+rnd.IntN(40)))
			req.Header.Set("authorization", bearer(rnd.IntN(4)))
			req.Header.Set("apns-id", id)
			if rnd.IntN(2) == 0 {
				req.Header.Set("apns-collapse-id", fmt.Sprintf("c%d", rnd.IntN(1000)))
			}
			for range rnd.IntN(4) {
				req.Header.Add(fmt.Sprintf("X-Pad-%d", rnd.IntN(6)), strings.Repeat(pick("p", "q", "r"), rnd.IntN(700)))
			}
			var fields []string
			for k, vv := range req.Header {
				for _, v := range vv {
					fields = append(fields, strings.ToLower(k)+": "+v)
				}
			}
			fields = append(fields, ":method: POST", ":scheme: https", ":authority: api.push.apple.com",
				":path: "+req.URL.Path, "content-length: "+strconv.Itoa(len(testPayload)))
			sortStrings(fields)
			want[id] = fields
			results = append(results, goRoundTrip(cc, req))
		}
		for _, r := range p.readRequests(perBatch) {
			var got []string
			for _, f := range r.fields {
				got = append(got, f.Name+": "+f.Value)
			}
			sortStrings(got)
			id := r.get("apns-id")
			if w, ok := want[id]; !ok || strings.Join(w, "\n") != strings.Join(got, "\n") {
				t.Fatalf("batch %d, stream %d: decoded\n%s\nwant\n%s", b, r.id, short(got), short(w))
			}
			delete(want, id)
			p.respond(r.id, 200, "")
		}
		for _, res := range results {
			answered(t, res, 200)
		}
	}
}

func sortStrings(s []string) { slices.Sort(s) }

// short shortens long fields for a failure's message.
func short(fields []string) string {
	var b strings.Builder
	for _, f := range fields {
		if len(f) > 80 {
			f = fmt.Sprintf("%s...(%d bytes)", f[:60], len(f))
		}
		b.WriteString("  " + f + "\n")
	}
	return b.String()
}

// A stream the server resets while its body waits for window sends no
// more DATA, even when window for it comes later.
func TestH2ResetWhileSendingTheBodyStopsIt(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
	res := goRoundTrip(cc, pushReq(t, context.Background(), "aa", strings.Repeat("b", 50)))
	f := p.expect("DATA", func(f *peerFrame) bool { return f.Type == http2.FrameData })
	p.write(func(fr *http2.Framer) error { return fr.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream) })
	err := failed(t, res)
	var se http2.StreamError
	if !errors.As(err, &se) || se.Code != http2.ErrCodeRefusedStream {
		t.Errorf("error %v, want a StreamError REFUSED_STREAM", err)
	}
	p.windowUpdate(f.StreamID, 1000)
	p.write(func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{5}) })
	for {
		g := p.next()
		if g.Type == http2.FrameData && g.StreamID == f.StreamID {
			t.Fatalf("DATA on stream %d after the server reset it", f.StreamID)
		}
		if g.is(http2.FramePing, http2.FlagPingAck) {
			break
		}
	}
	if st := cc.State(); st.Closed || st.Closing {
		t.Errorf("state %+v", st)
	}
}

// x/net's assumption, kept: a server whose SETTINGS name no stream limit
// allows 1000.
func TestH2SettingsWithoutAStreamLimitMean1000(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 16})
	if got := cc.State().MaxConcurrentStreams; got != 1000 {
		t.Errorf("MaxConcurrentStreams %d after SETTINGS without a limit, want 1000", got)
	}
}

// A server may answer before the whole body has come (a 413, say): the
// answer is returned at once, not after window for the rest, and the
// client sends no more of the body.
func TestH2EarlyAnswerEndsTheBody(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
	res := goRoundTrip(cc, pushReq(t, context.Background(), "aa", strings.Repeat("b", 50)))
	f := p.expect("DATA", func(f *peerFrame) bool { return f.Type == http2.FrameData })
	p.respond(f.StreamID, 413, `{"reason":"PayloadTooLarge"}`)
	a := answered(t, res, 413)
	if string(a.body) != `{"reason":"PayloadTooLarge"}` {
		t.Errorf("body %q", a.body)
	}
	p.windowUpdate(f.StreamID, 1000)
	p.write(func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{6}) })
	for {
		g := p.next()
		if g.Type == http2.FrameData && g.StreamID == f.StreamID {
			t.Fatalf("DATA on stream %d after its answer", f.StreamID)
		}
		if g.is(http2.FramePing, http2.FlagPingAck) {
			break
		}
	}
	res = goRoundTrip(cc, h2push(t, "bb"))
	r := p.expect("the next request", func(f *peerFrame) bool { return f.Type == http2.FrameHeaders }).asRequest()
	p.respond(r.id, 200, "")
	answered(t, res, 200)
}

// A request that cannot be encoded fails alone, before anything is sent.
func TestH2InvalidRequestHeaderFailsOnlyThatRequest(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake()
	bad := h2push(t, "aa")
	bad.Header.Set("apns-collapse-id", "a\r\nx-injected: 1")
	failed(t, goRoundTrip(cc, bad))
	badName := h2push(t, "aa")
	badName.Header["Bad Name"] = []string{"v"}
	failed(t, goRoundTrip(cc, badName))
	res := goRoundTrip(cc, h2push(t, "bb"))
	r := p.readRequest()
	if r.id != 1 || r.get(":path") != "/3/device/bb" {
		t.Errorf("first stream the server sees: %d %q", r.id, r.get(":path"))
	}
	p.respond(r.id, 200, "")
	answered(t, res, 200)
}

// RoundTrip is do for an http.Request, converted and checked as
// Pool.RoundTrip and Pool.Push do: the tests script requests the way
// net/http clients make them.
func (cc *clientConn) RoundTrip(req *http.Request) (*http.Response, error) {
	r, err := requestFrom(req)
	if err == nil {
		err = r.check()
	}
	if err != nil {
		return nil, err
	}
	resp, err := cc.do(req.Context(), r)
	if err != nil {
		return nil, err
	}
	return resp.httpResponse(req), nil
}

// An answer whose header list is over what the client accepts arrives
// with fields dropped by the decoder: it fails, rather than being read
// without them, and the connection carries on.
func TestH2AnswerWithTooLargeHeadersFails(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake()
	res := goRoundTrip(cc, h2push(t, "aa"))
	r := p.readRequest()
	big := strings.Repeat("v", 16000)
	pairs := []string{":status", "410"}
	for i := range 5 { // 80,000 bytes of fields, over maxResponseHeaders
		pairs = append(pairs, fmt.Sprintf("x-big-%d", i), big)
	}
	p.writeHeaders(r.id, true, 8000, pairs...)
	if err := failed(t, res); !strings.Contains(err.Error(), "headers") {
		t.Errorf("error %v, want one about the answer's headers", err)
	}
	p.expect("RST_STREAM", func(f *peerFrame) bool { return f.Type == http2.FrameRSTStream && f.StreamID == r.id })
	p.carriesOn(t, cc)
}

// A HEADERS frame whose padding is longer than the frame (RFC 9113 6.2:
// a connection error) never has its header block decoded by the
// framer, which reports it as a mere stream error: the server's HPACK
// table then holds what that block added and the client's does not, so
// every later answer would be decoded against the wrong table. The
// connection must close instead.
func TestH2HeadersWithBadPaddingCloseTheConnection(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake()
	res := goRoundTrip(cc, h2push(t, "aa"))
	r := p.readRequest()
	p.respond(r.id, 200, "", "apns-id", "first")
	answered(t, res, 200)

	res = goRoundTrip(cc, h2push(t, "bb"))
	r = p.readRequest()
	p.write(func(fr *http2.Framer) error {
		// The block adds "apns-id: second" to the server's table.
		block := p.blockLocked(":status", "200", "apns-id", "second")
		payload := append([]byte{byte(len(block) + 10)}, block...)
		return fr.WriteRawFrame(http2.FrameHeaders,
			http2.FlagHeadersEndHeaders|http2.FlagHeadersEndStream|http2.FlagHeadersPadded, r.id, payload)
	})
	t.Logf("RoundTrip: %v", failed(t, res))
	// A PING's answer says the client read the frame and stayed open.
	p.tryWrite(func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{7}) })
	for f := range p.frames {
		if f.Err != nil || f.is(http2.FramePing, http2.FlagPingAck) {
			break
		}
	}
	if st := stateWithin(t, cc); !st.Closed {
		// Show what staying open costs: the next answer's "apns-id:
		// second" is an index into the server's table.
		res = goRoundTrip(cc, h2push(t, "cc"))
		r = p.readRequest()
		p.respond(r.id, 200, "", "apns-id", "second")
		got := result(t, res)
		if got.err == nil {
			t.Fatalf("state %+v after HEADERS with padding longer than the frame; the next answer's apns-id reads %q, sent as \"second\"",
				st, got.resp.Header.Get("Apns-Id"))
		}
		t.Fatalf("state %+v after HEADERS with padding longer than the frame; the next request failed: %v", st, got.err)
	}
}

// A change of SETTINGS_INITIAL_WINDOW_SIZE that takes an open stream's
// window past 2^31-1 is a FLOW_CONTROL_ERROR of the connection (RFC 9113
// 6.9.2). Added up in an int32, the window wraps to a negative number and
// the rest of the body waits forever.
func TestH2InitialWindowSizeOverflowClosesTheConnection(t *testing.T) {
	cc, p := startH2(t, connOptions{})
	p.handshake()
	body := strings.Repeat("b", 65535+10)
	res := goRoundTrip(cc, pushReq(t, context.Background(), "aa", body))
	// The connection's 65535 bytes go; the stream's window is spent too.
	var id uint32
	for got := 0; got < 65535; {
		f := p.expect("DATA", func(f *peerFrame) bool { return f.Type == http2.FrameData })
		id, got = f.StreamID, got+len(f.Data)
	}
	p.windowUpdate(id, 1<<31-1) // the stream's window: 2^31-1, the most it may be
	p.settings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65536})
	p.windowUpdate(0, 100)
	p.tryWrite(func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{8}) })
	for f := range p.frames {
		if f.Err != nil || f.is(http2.FramePing, http2.FlagPingAck) {
			break
		}
		if f.Type == http2.FrameData {
			t.Logf("client sent %d more bytes", len(f.Data))
		}
	}
	if st := stateWithin(t, cc); !st.Closed {
		cc.mu.Lock()
		var w int32
		if s := cc.streams[id]; s != nil {
			w = s.sendWindow
		}
		cc.mu.Unlock()
		t.Fatalf("state %+v after SETTINGS took stream %d's window past 2^31-1 (its window now reads %d); request pending: %v",
			st, id, w, pending(res))
	}
	failed(t, res)
}
