package transport

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// clientConn is one HTTP/2 connection to APNs, written for what a push
// is: a POST of a few hundred bytes whose whole answer is a status, a
// header or two and at most a short JSON reason.
//
// x/net's general client was 35 % of the daemon's CPU under load: a
// goroutine per request to write it and copy its body, an HPACK table
// that indexed every device's unique :path and so evicted an entry on
// every push, and per-stream machinery for bodies of any size. Here the
// caller's goroutine writes its request's frames (into coalescingConn's
// buffer, so pushes in flight still share their system calls), the one
// read loop hands each answer over whole, and :path is sent "never
// indexed", which leaves the constant headers in the table for good.
//
// What it keeps of the protocol: the server's SETTINGS (stream limit,
// windows, frame size, table size), flow control in both directions,
// RST_STREAM, GOAWAY (streams above its last id fail at once and the
// connection closes when the others end), PING both ways as a health
// check, and closing itself when idle.
type clientConn struct {
	conn net.Conn
	opts connOptions
	fr   *http2.Framer // ReadFrame only in readLoop; writes under wmu, into wbuf

	// wmu keeps the frames on the wire whole and in order, and the
	// encoder's table in step with them. It is taken before mu, never
	// while mu is held: a write can wait for coalescingConn's buffer, and
	// mu must stay free meanwhile so that a dead connection can be closed.
	wmu  sync.Mutex
	hdr  *headerEncoder
	wbuf bytes.Buffer // the framer's frames until send writes them

	mu           sync.Mutex
	cond         sync.Cond // window, stream slot or state changed
	streams      map[uint32]*h2stream
	reserved     int    // slots taken by requests not yet in streams
	nextID       uint32 // the next stream id to use
	maxStreams   uint32 // the server's SETTINGS_MAX_CONCURRENT_STREAMS
	initWindow   int32  // the server's SETTINGS_INITIAL_WINDOW_SIZE
	connWindow   int32  // what may be sent on the connection
	maxFrameSize uint32
	recvUnacked  uint32    // DATA bytes received since the last WINDOW_UPDATE
	gotSettings  bool      // the server's first SETTINGS arrived
	goingAway    bool      // GOAWAY received or Close called
	closed       bool      // no frame will be read or sent any more
	err          error     // why it closed
	idleSince    time.Time // when the last stream ended; zero while one is open
	pingData     [8]byte
	pingSent     bool // waiting for the answer to pingData
	pingAnswered chan struct{}

	lastRead atomic.Int64 // when the last frame arrived, unix ns
	done     chan struct{}
}

// connOptions are a connection's timings; zero turns that check off.
type connOptions struct {
	// ReadIdleTimeout is the silence after which a PING is sent;
	// PingTimeout how long its answer may take before the connection is
	// closed as dead; IdleTimeout how long the connection stays open with
	// no request on it.
	ReadIdleTimeout, PingTimeout, IdleTimeout time.Duration
}

// connState is what the pool reads of a connection.
type connState struct {
	Closed  bool // no request can be sent or answered on it
	Closing bool // no new request; the ones in flight may still end
	// MaxConcurrentStreams is the server's limit: 100 until its SETTINGS
	// arrive, 1000 if they do not name one (as x/net assumes).
	MaxConcurrentStreams uint32
}

// h2stream is one request in flight. Its fields other than id are
// guarded by clientConn.mu until done is closed.
type h2stream struct {
	id         uint32
	sendWindow int32
	resp       *Response
	err        error
	done       chan struct{}
}

const (
	// ourWindow is the receive window per stream and what the connection
	// window is raised to: answers are a few bytes, so no stream ever
	// needs a WINDOW_UPDATE, and the connection gets one per refundAfter.
	ourWindow   = 1 << 20
	refundAfter = ourWindow / 2
	// maxResponseBody bounds an answer: Apple's are under 100 bytes.
	maxResponseBody = 64 << 10
	// maxResponseHeaders bounds an answer's decoded header list.
	maxResponseHeaders = 64 << 10
	maxStreamID        = 1<<31 - 1
	// Until the server's SETTINGS say otherwise (RFC 9113 6.5.2, and
	// x/net's assumptions for the stream limit).
	initialMaxStreams    = 100
	defaultMaxStreams    = 1000
	defaultWindow        = 65535
	defaultMaxFrameSize  = 16384
	defaultHeaderTableSz = 4096
)

// errConnClosed fails requests on a connection closed by Close or by
// its idle timer.
var errConnClosed = errors.New("http2: connection closed")

// errGoingAway fails a request the server will not process: it came
// after GOAWAY, or its stream id is above the GOAWAY's last one. It was
// not processed, so it can be sent again on another connection.
var errGoingAway = errors.New("http2: server sent GOAWAY; request not processed")

// newClientConn starts HTTP/2 on c: the preface, our SETTINGS and a
// larger connection window. It does not wait for the server's SETTINGS;
// requests wait for none either, the server may refuse them
// (REFUSED_STREAM) until its limits are known.
func newClientConn(c net.Conn, o connOptions) (*clientConn, error) {
	cc := &clientConn{
		conn:         c,
		opts:         o,
		streams:      make(map[uint32]*h2stream),
		nextID:       1,
		maxStreams:   initialMaxStreams,
		initWindow:   defaultWindow,
		connWindow:   defaultWindow,
		maxFrameSize: defaultMaxFrameSize,
		idleSince:    time.Now(),
		pingAnswered: make(chan struct{}, 1),
		done:         make(chan struct{}),
	}
	cc.cond.L = &cc.mu
	cc.hdr = newHeaderEncoder()
	cc.fr = http2.NewFramer(&cc.wbuf, bufio.NewReaderSize(c, 16<<10))
	cc.fr.SetMaxReadFrameSize(defaultMaxFrameSize) // we advertise no more
	cc.fr.ReadMetaHeaders = hpack.NewDecoder(defaultHeaderTableSz, nil)
	cc.fr.MaxHeaderListSize = maxResponseHeaders
	cc.lastRead.Store(time.Now().UnixNano())

	cc.wbuf.WriteString(http2.ClientPreface)
	err := cc.fr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: ourWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: maxResponseHeaders},
	)
	if err == nil {
		err = cc.fr.WriteWindowUpdate(0, ourWindow-defaultWindow)
	}
	if err := cc.send(err); err != nil {
		return nil, err
	}
	go cc.readLoop()
	if o.ReadIdleTimeout > 0 || o.IdleTimeout > 0 {
		go cc.watch()
	}
	return cc, nil
}

// send writes what the framer made since the last send (under wmu), in
// one Write: a header block's HEADERS and CONTINUATION frames stay
// together even beside the health check's PING, which is written without
// wmu. err is the framer's.
func (cc *clientConn) send(err error) error {
	if err == nil {
		_, err = cc.conn.Write(cc.wbuf.Bytes())
	}
	cc.wbuf.Reset()
	return err
}

// State says whether the connection can take requests, and its limit.
func (cc *clientConn) State() connState {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return connState{Closed: cc.closed, Closing: cc.goingAway && !cc.closed, MaxConcurrentStreams: cc.maxStreams}
}

// Close fails every request in flight and closes the connection.
func (cc *clientConn) Close() error {
	cc.closeWith(errConnClosed)
	return nil
}

// do sends r, which Request.check has passed, and waits for its whole
// answer. An error other than the context's says the request got no
// answer on this connection.
func (cc *clientConn) do(ctx context.Context, r *Request) (*Response, error) {
	s, err := cc.open(ctx, r)
	if err != nil {
		return nil, err
	}
	if len(r.Body) > 0 {
		cc.sendBody(ctx, s, r.Body)
	}
	select {
	case <-s.done:
	case <-ctx.Done():
		if !cc.cancel(s) {
			<-s.done // answered meanwhile
			break
		}
		return nil, ctx.Err()
	}
	if s.err != nil {
		return nil, s.err
	}
	return s.resp, nil
}

// open takes a stream slot (waiting while the server's limit is
// reached), then writes the request's HEADERS under the next stream id.
func (cc *clientConn) open(ctx context.Context, r *Request) (*h2stream, error) {
	if err := cc.reserve(ctx); err != nil {
		return nil, err
	}
	s := &h2stream{done: make(chan struct{})}
	cc.wmu.Lock()
	cc.mu.Lock()
	cc.reserved--
	if cc.closed || cc.goingAway {
		err := cc.errLocked()
		cc.cond.Broadcast()
		cc.mu.Unlock()
		cc.wmu.Unlock()
		return nil, err
	}
	if cc.nextID > maxStreamID {
		// Out of stream ids: like after a GOAWAY, the requests in flight
		// end here and new ones go to another connection.
		cc.goingAway = true
		err := cc.errLocked()
		if len(cc.streams) == 0 {
			cc.closeLocked(err)
		}
		cc.cond.Broadcast()
		cc.mu.Unlock()
		cc.wmu.Unlock()
		return nil, err
	}
	s.id = cc.nextID
	cc.nextID += 2
	if cc.nextID > maxStreamID {
		cc.goingAway = true // the last id: this request ends the connection
	}
	s.sendWindow = cc.initWindow
	cc.streams[s.id] = s
	cc.idleSince = time.Time{}
	maxFrame := int(cc.maxFrameSize)
	cc.mu.Unlock()
	err := cc.writeHeaders(s.id, len(r.Body) == 0, cc.encodeHeaders(r), maxFrame)
	cc.wmu.Unlock()
	if err != nil {
		cc.closeWith(err)
	}
	return s, nil
}

// reserve waits for a stream slot under the server's limit.
func (cc *clientConn) reserve(ctx context.Context) error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	var stop func() bool
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	for {
		if cc.closed || cc.goingAway {
			return cc.errLocked()
		}
		if uint32(len(cc.streams)+cc.reserved) < cc.maxStreams {
			cc.reserved++
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if stop == nil {
			stop = context.AfterFunc(ctx, cc.wake)
		}
		cc.cond.Wait()
	}
}

// wake lets waiters look again (a context ended).
func (cc *clientConn) wake() {
	cc.mu.Lock()
	cc.cond.Broadcast()
	cc.mu.Unlock()
}

// errLocked is why no request can be sent.
func (cc *clientConn) errLocked() error {
	if cc.closed {
		return cc.err
	}
	return errGoingAway
}

// encodeHeaders makes r's header block (under wmu: the encoder's table
// follows the order of blocks on the wire). The block is valid until
// the next call.
func (cc *clientConn) encodeHeaders(r *Request) []byte {
	e := cc.hdr
	e.start()
	// :authority comes first: after a change of the table's size, the
	// block must start with hpack.Encoder's word of it.
	e.repeated(":authority", r.Authority)
	method := r.Method
	if method == "" {
		method = http.MethodPost
	}
	e.repeated(":method", method)
	e.unique(":path", staticPath, r.Path)
	e.repeated(":scheme", "https")
	for _, f := range r.Fields {
		if f.Unique {
			e.unique(f.Name, 0, f.Value)
		} else {
			e.repeated(f.Name, f.Value)
		}
	}
	if len(r.Body) > 0 {
		e.repeated("content-length", strconv.Itoa(len(r.Body)))
	}
	return e.block()
}

// writeHeaders writes a header block in a HEADERS frame and as many
// CONTINUATION frames as the server's frame size needs (under wmu).
func (cc *clientConn) writeHeaders(id uint32, endStream bool, block []byte, maxFrame int) error {
	first := block[:min(len(block), maxFrame)]
	rest := block[len(first):]
	err := cc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: endStream, EndHeaders: len(rest) == 0})
	for err == nil && len(rest) > 0 {
		frag := rest[:min(len(rest), maxFrame)]
		rest = rest[len(frag):]
		err = cc.fr.WriteContinuation(id, len(rest) == 0, frag)
	}
	return cc.send(err)
}

// sendBody writes body in DATA frames as the flow-control windows allow.
// It gives up, silently, when the stream or connection ends: the waiter
// reads why from the stream.
func (cc *clientConn) sendBody(ctx context.Context, s *h2stream, body []byte) {
	var stop func() bool
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	for len(body) > 0 {
		cc.mu.Lock()
		for !cc.closed && !cc.finishedLocked(s) && ctx.Err() == nil && (cc.connWindow <= 0 || s.sendWindow <= 0) {
			if stop == nil {
				stop = context.AfterFunc(ctx, cc.wake)
			}
			cc.cond.Wait()
		}
		if cc.closed || cc.finishedLocked(s) || ctx.Err() != nil {
			answered := !cc.closed && cc.finishedLocked(s) && s.err == nil
			cc.mu.Unlock()
			if answered {
				// The server answered before the whole body was sent:
				// end our half of the stream so it stops counting it.
				cc.writeRST(s.id, http2.ErrCodeCancel)
			}
			return
		}
		n := min(len(body), int(cc.maxFrameSize), int(cc.connWindow), int(s.sendWindow))
		cc.connWindow -= int32(n)
		s.sendWindow -= int32(n)
		cc.mu.Unlock()
		cc.wmu.Lock()
		err := cc.send(cc.fr.WriteData(s.id, n == len(body), body[:n]))
		cc.wmu.Unlock()
		if err != nil {
			cc.closeWith(err)
			return
		}
		body = body[n:]
	}
}

// finishedLocked: s has its answer or its error.
func (cc *clientConn) finishedLocked(s *h2stream) bool {
	return cc.streams[s.id] != s
}

// cancel gives up on s (its context ended): the server is told with
// RST_STREAM. It reports false if s had already finished.
func (cc *clientConn) cancel(s *h2stream) bool {
	cc.mu.Lock()
	if cc.finishedLocked(s) {
		cc.mu.Unlock()
		return false
	}
	cc.finishLocked(s, context.Canceled)
	closed := cc.closed
	cc.mu.Unlock()
	if !closed {
		cc.writeRST(s.id, http2.ErrCodeCancel)
	}
	return true
}

// writeRST resets a stream. A write error shows in the read loop, which
// then closes the connection.
func (cc *clientConn) writeRST(id uint32, code http2.ErrCode) {
	cc.wmu.Lock()
	cc.send(cc.fr.WriteRSTStream(id, code))
	cc.wmu.Unlock()
}

// finishLocked ends s with its answer (s.resp) or err, frees its slot,
// and closes a connection that is going away once its last stream ends.
func (cc *clientConn) finishLocked(s *h2stream, err error) {
	if cc.streams[s.id] != s {
		return
	}
	delete(cc.streams, s.id)
	s.err = err
	close(s.done)
	if len(cc.streams) == 0 {
		cc.idleSince = time.Now()
		if cc.goingAway && !cc.closed {
			cc.closeLocked(errGoingAway)
		}
	}
	cc.cond.Broadcast()
}

// closeWith closes the connection for err, failing what is in flight.
func (cc *clientConn) closeWith(err error) {
	cc.mu.Lock()
	cc.closeLocked(err)
	cc.mu.Unlock()
}

func (cc *clientConn) closeLocked(err error) {
	if cc.closed {
		return
	}
	cc.closed, cc.goingAway, cc.err = true, true, err
	for _, s := range cc.streams {
		delete(cc.streams, s.id)
		s.err = err
		close(s.done)
	}
	close(cc.done)
	cc.cond.Broadcast()
	// Closing the socket ends readLoop; coalescingConn still writes what
	// it has buffered first, within its bound.
	go cc.conn.Close()
}

// readLoop reads the server's frames until the connection ends.
func (cc *clientConn) readLoop() {
	for {
		// ReadFrame's two halves: the header says which frame failed.
		fh, err := cc.fr.ReadFrameHeader()
		var f http2.Frame
		if err == nil {
			f, err = cc.fr.ReadFrameForHeader(fh)
		}
		if err != nil {
			var se http2.StreamError
			// A HEADERS frame refused without a cause (its padding longer
			// than the frame) never had its block decoded: the server's
			// HPACK table holds what the block added and ours does not, so
			// it is the connection's error (RFC 9113 6.2).
			if errors.As(err, &se) && !(fh.Type == http2.FrameHeaders && se.Cause == nil) {
				cc.resetStream(se.StreamID, se.Code, se)
				continue
			}
			cc.closeWith(fmt.Errorf("http2: connection lost: %w", err))
			return
		}
		cc.lastRead.Store(time.Now().UnixNano())
		if err := cc.handle(f); err != nil {
			cc.closeWith(err)
			return
		}
	}
}

// handle acts on one frame; an error closes the connection. Frames are
// written back (acks, resets, window updates) after mu is released.
func (cc *clientConn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		if r := cc.onHeaders(f); r != nil {
			cc.reset(r)
		}
	case *http2.DataFrame:
		refund, r := cc.onData(f)
		if refund > 0 {
			cc.wmu.Lock()
			err := cc.send(cc.fr.WriteWindowUpdate(0, refund))
			cc.wmu.Unlock()
			if err != nil {
				return err
			}
		}
		if r != nil {
			cc.reset(r)
		}
	case *http2.RSTStreamFrame:
		cc.mu.Lock()
		if s := cc.streams[f.StreamID]; s != nil {
			cc.finishLocked(s, http2.StreamError{StreamID: f.StreamID, Code: f.ErrCode})
		}
		cc.mu.Unlock()
	case *http2.SettingsFrame:
		return cc.onSettings(f)
	case *http2.WindowUpdateFrame:
		return cc.onWindowUpdate(f)
	case *http2.PingFrame:
		return cc.onPing(f)
	case *http2.GoAwayFrame:
		cc.onGoAway(f)
	case *http2.PushPromiseFrame:
		return errors.New("http2: server sent PUSH_PROMISE, which we disabled")
	}
	return nil
}

// streamReset is a stream the client resets: its RST_STREAM goes out
// before the stream ends and its slot frees (reset), so that the next
// request's HEADERS cannot reach the server first and exceed its limit.
type streamReset struct {
	id   uint32
	code http2.ErrCode
	err  error // what the request fails with
}

// reset writes r's RST_STREAM, then ends its stream.
func (cc *clientConn) reset(r *streamReset) {
	cc.writeRST(r.id, r.code)
	cc.mu.Lock()
	if s := cc.streams[r.id]; s != nil {
		cc.finishLocked(s, r.err)
	}
	cc.mu.Unlock()
}

// onHeaders takes an answer's headers (or trailers). It says whether the
// stream is to be reset.
func (cc *clientConn) onHeaders(f *http2.MetaHeadersFrame) *streamReset {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	s := cc.streams[f.StreamID]
	if s == nil {
		return nil // cancelled, or not ours
	}
	if f.Truncated {
		// Over maxResponseHeaders: the decoder dropped fields, and an
		// answer read without them could be misread.
		return &streamReset{s.id, http2.ErrCodeProtocol, errors.New("http2: answer headers over the size we accept")}
	}
	if s.resp == nil {
		status, err := strconv.Atoi(f.PseudoValue("status"))
		if err != nil || status < 100 || status > 999 {
			return &streamReset{s.id, http2.ErrCodeProtocol, fmt.Errorf("http2: answer with status %q", f.PseudoValue("status"))}
		}
		if status < 200 && !f.StreamEnded() {
			return nil // informational; the real answer follows
		}
		s.resp = &Response{Status: status, Header: f.RegularFields()}
	}
	if f.StreamEnded() {
		cc.finishLocked(s, nil) // the answer is whole
	}
	return nil
}

// onData takes a piece of an answer's body. It says how much connection
// window to give back, and whether the stream is to be reset.
func (cc *clientConn) onData(f *http2.DataFrame) (refund uint32, r *streamReset) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	// Every DATA byte counts against our connection window, even for a
	// stream we no longer want.
	cc.recvUnacked += f.Header().Length
	if cc.recvUnacked >= refundAfter {
		refund, cc.recvUnacked = cc.recvUnacked, 0
	}
	s := cc.streams[f.StreamID]
	switch {
	case s == nil:
	case s.resp == nil:
		return refund, &streamReset{s.id, http2.ErrCodeProtocol, errors.New("http2: answer body before its headers")}
	case len(s.resp.Body)+len(f.Data()) > maxResponseBody:
		return refund, &streamReset{s.id, http2.ErrCodeCancel, errors.New("http2: answer body too large")}
	default:
		s.resp.Body = append(s.resp.Body, f.Data()...)
		if f.StreamEnded() {
			cc.finishLocked(s, nil) // the answer is whole
		}
	}
	return refund, nil
}

// resetStream answers a stream error the framer found in a frame.
func (cc *clientConn) resetStream(id uint32, code http2.ErrCode, err error) {
	cc.mu.Lock()
	s := cc.streams[id]
	cc.mu.Unlock()
	if s != nil {
		cc.reset(&streamReset{id, code, err})
	}
}

// onSettings applies the server's SETTINGS and acknowledges them. The
// encoder's table size changes under wmu, between two header blocks.
func (cc *clientConn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	cc.mu.Lock()
	first := !cc.gotSettings
	cc.gotSettings = true
	sawMax := false
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingMaxConcurrentStreams:
			cc.maxStreams, sawMax = s.Val, true
		case http2.SettingInitialWindowSize:
			delta := int32(s.Val) - cc.initWindow
			for _, st := range cc.streams {
				if int64(st.sendWindow)+int64(delta) > 1<<31-1 {
					return errors.New("INITIAL_WINDOW_SIZE takes a stream's window past 2^31-1")
				}
				st.sendWindow += delta
			}
			cc.initWindow = int32(s.Val)
		case http2.SettingMaxFrameSize:
			cc.maxFrameSize = s.Val
		case http2.SettingHeaderTableSize:
			cc.hdr.setMaxTableSize(s.Val)
		}
		return nil
	})
	if first && !sawMax {
		cc.maxStreams = defaultMaxStreams
	}
	cc.cond.Broadcast()
	cc.mu.Unlock()
	if err != nil {
		return fmt.Errorf("http2: server SETTINGS: %w", err)
	}
	return cc.send(cc.fr.WriteSettingsAck())
}

// onWindowUpdate opens a send window.
func (cc *clientConn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	w := &cc.connWindow
	if f.StreamID != 0 {
		s := cc.streams[f.StreamID]
		if s == nil {
			return nil
		}
		w = &s.sendWindow
	}
	if int64(*w)+int64(f.Increment) > 1<<31-1 {
		return errors.New("http2: server's WINDOW_UPDATE overflows the window")
	}
	*w += int32(f.Increment)
	cc.cond.Broadcast()
	return nil
}

// onPing answers the server's PING, or takes the answer to ours.
func (cc *clientConn) onPing(f *http2.PingFrame) error {
	if f.IsAck() {
		cc.mu.Lock()
		if cc.pingSent && f.Data == cc.pingData {
			cc.pingSent = false
			select {
			case cc.pingAnswered <- struct{}{}:
			default:
			}
		}
		cc.mu.Unlock()
		return nil
	}
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	return cc.send(cc.fr.WritePing(true, f.Data))
}

// onGoAway fails the streams the server will not process and lets the
// others finish; the connection closes after the last.
func (cc *clientConn) onGoAway(f *http2.GoAwayFrame) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.goingAway = true
	for id, s := range cc.streams {
		if id > f.LastStreamID {
			cc.finishLocked(s, errGoingAway)
		}
	}
	if len(cc.streams) == 0 {
		cc.closeLocked(errGoingAway)
	}
	cc.cond.Broadcast()
}

// watch is the health check and the idle timer: a PING after
// ReadIdleTimeout of silence, closing when its answer takes longer than
// PingTimeout, and closing after IdleTimeout without a request.
func (cc *clientConn) watch() {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		now := time.Now()
		next := now.Add(time.Hour)
		if d := cc.opts.ReadIdleTimeout; d > 0 {
			silentUntil := time.Unix(0, cc.lastRead.Load()).Add(d)
			if !now.Before(silentUntil) {
				if !cc.ping(t) {
					return
				}
				continue
			}
			next = silentUntil
		}
		if d := cc.opts.IdleTimeout; d > 0 {
			closeAt, closed := cc.closeIfIdle(now, d)
			if closed {
				return
			}
			next = minTime(next, closeAt)
		}
		t.Reset(time.Until(next))
		select {
		case <-t.C:
		case <-cc.done:
			return
		}
	}
}

// ping sends a PING and waits PingTimeout for its answer; without one
// it closes the connection and reports false. The PING is written
// without wmu, from a goroutine of its own: a writer stuck on a peer
// that stopped reading holds wmu, and a dead connection is exactly what
// this must find.
func (cc *clientConn) ping(t *time.Timer) bool {
	cc.mu.Lock()
	rand.Read(cc.pingData[:])
	cc.pingSent = true
	frame := append([]byte{0, 0, 8, byte(http2.FramePing), 0, 0, 0, 0, 0}, cc.pingData[:]...)
	cc.mu.Unlock()
	go func() {
		if _, err := cc.conn.Write(frame); err != nil {
			cc.closeWith(fmt.Errorf("http2: sending PING: %w", err))
		}
	}()
	wait := cc.opts.PingTimeout
	if wait <= 0 {
		wait = defaultPingTimeout
	}
	t.Reset(wait)
	select {
	case <-cc.pingAnswered:
		cc.lastRead.Store(time.Now().UnixNano())
		if !t.Stop() {
			<-t.C
		}
		return true
	case <-t.C:
		cc.closeWith(errors.New("http2: no answer to PING: connection dead"))
		return false
	case <-cc.done:
		return false
	}
}

// closeIfIdle closes the connection if no request has been on it for d,
// deciding and closing under one lock: a request that opened its stream
// in between would be failed after its frames were buffered, and sent
// again elsewhere. Otherwise it says when to look again.
func (cc *clientConn) closeIfIdle(now time.Time, d time.Duration) (time.Time, bool) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.idleSince.IsZero() || cc.reserved > 0 {
		return now.Add(d), false
	}
	if at := cc.idleSince.Add(d); now.Before(at) {
		return at, false
	}
	cc.closeLocked(errConnClosed)
	return now, true
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
