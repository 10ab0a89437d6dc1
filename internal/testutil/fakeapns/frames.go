package fakeapns

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

// HTTP/2 frame types and flags this file looks at (RFC 9113 §6).
const (
	frameHeaders  = 0x1
	frameSettings = 0x4
	framePing     = 0x6
	frameGoAway   = 0x7

	flagAck = 0x1

	settingMaxConcurrentStreams = 0x3

	frameHeaderLen = 9
	clientPreface  = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
)

// frameConn sits between a TLS connection and the HTTP/2 server when
// Options.Apple is set, and does at the frame level what net/http's
// server cannot be asked to do:
//
//   - it rewrites the server's first SETTINGS so that a token connection
//     (one without a client certificate) is offered one stream, and sends
//     new SETTINGS when the handler raises or lowers that limit;
//   - it sends GOAWAY and from then on hides the client's new streams
//     from the server, as a server that went away would never see them;
//   - it can swallow the client's PINGs, or everything the client sends,
//     to play a connection that went silent.
//
// The server's writes are parsed only to find frame boundaries, where
// the extra frames go.
type frameConn struct {
	net.Conn // the *tls.Conn
	tls      *tls.Conn
	srv      *Server
	id       int64

	handshake sync.Once
	token     bool // no client certificate: APNs' token connection
	peerUID   string

	// Read side, used only by the server's reading goroutine.
	br          *bufio.Reader
	prefaceDone bool
	frame       []byte // the frame being handed out
	out         []byte // what is left of it

	// limit is the stream limit in force: active streams above it are
	// refused. active counts the requests being handled.
	limit  atomic.Int32
	active atomic.Int32

	mu         sync.Mutex
	silent     bool     // drop everything the client sends
	goneAway   bool     // GOAWAY sent
	goAwayID   uint32   // its last stream id
	lastStream uint32   // highest stream the client opened
	ackedFirst bool     // the client acknowledged the server's own SETTINGS
	unacked    []uint32 // limits sent in injected SETTINGS, not yet acknowledged
	advertised uint32   // the last limit sent

	// Write side, under mu.
	whdr    [frameHeaderLen]byte
	whn     int    // bytes of whdr filled
	wleft   int    // payload bytes of the current frame still to pass
	first   bool   // the server's first frame has been seen
	holding []byte // the server's first SETTINGS, held whole for rewriting
	hleft   int    // bytes still missing from holding
	inject  []byte // frames to send at the next frame boundary
	wbuf    []byte
}

func newFrameConn(s *Server, c net.Conn, id int64) *frameConn {
	tc := tls.Server(c, s.appleTLS)
	fc := &frameConn{Conn: tc, tls: tc, srv: s, id: id, br: bufio.NewReaderSize(tc, 32<<10)}
	fc.limit.Store(int32(s.maxStreams))
	fc.advertised = uint32(s.maxStreams)
	return fc
}

// netConn is the TCP connection under TLS.
func (c *frameConn) netConn() net.Conn { return c.tls.NetConn() }

// doHandshake runs the TLS handshake once and classifies the connection.
func (c *frameConn) doHandshake() error {
	var err error
	c.handshake.Do(func() {
		if err = c.tls.Handshake(); err != nil {
			return
		}
		st := c.tls.ConnectionState()
		c.token = len(st.PeerCertificates) == 0
		if !c.token {
			c.peerUID = testpki.SubjectUID(st.PeerCertificates[0])
		}
		if c.token {
			c.limit.Store(1)
			c.mu.Lock()
			c.advertised = 1
			c.mu.Unlock()
		}
	})
	return err
}

func (c *frameConn) Read(p []byte) (int, error) {
	if err := c.doHandshake(); err != nil {
		return 0, err
	}
	for len(c.out) == 0 {
		if err := c.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// fill reads the next frame from the client and decides whether the
// server gets to see it.
func (c *frameConn) fill() error {
	if !c.prefaceDone {
		c.frame = growTo(c.frame, len(clientPreface))
		if _, err := io.ReadFull(c.br, c.frame); err != nil {
			return err
		}
		c.prefaceDone = true
		c.out = c.frame
		return nil
	}
	var hdr [frameHeaderLen]byte
	if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
		return err
	}
	length := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
	typ, flags := hdr[3], hdr[4]
	stream := binary.BigEndian.Uint32(hdr[5:]) & 0x7fffffff
	c.frame = growTo(c.frame, frameHeaderLen+length)
	copy(c.frame, hdr[:])
	if _, err := io.ReadFull(c.br, c.frame[frameHeaderLen:]); err != nil {
		return err
	}
	c.mu.Lock()
	pass := c.passLocked(typ, flags, stream)
	c.mu.Unlock()
	if pass {
		c.out = c.frame
	}
	return nil
}

func (c *frameConn) passLocked(typ, flags byte, stream uint32) bool {
	if c.silent {
		return false
	}
	if c.goneAway && stream > c.goAwayID {
		// A stream the server announced it will not process.
		return false
	}
	switch typ {
	case frameHeaders:
		c.lastStream = max(c.lastStream, stream)
	case framePing:
		if flags&flagAck == 0 && !c.srv.answerPings.Load() {
			return false
		}
	case frameSettings:
		if flags&flagAck == 0 {
			return true
		}
		if !c.ackedFirst {
			c.ackedFirst = true // the server's own SETTINGS
			return true
		}
		if len(c.unacked) == 0 {
			return true // let the server judge a stray ACK
		}
		v := c.unacked[0]
		c.unacked = c.unacked[1:]
		// A lower limit binds the client once it has acknowledged it; a
		// later SETTINGS still on its way wins.
		if len(c.unacked) == 0 && int32(v) < c.limit.Load() {
			c.limit.Store(int32(v))
		}
		return false // the server did not send it and must not see its ACK
	}
	return true
}

func growTo(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n, max(n, 16<<10))
	}
	return b[:n]
}

// Write passes the server's frames on, rewriting its first SETTINGS and
// adding injected frames between frames.
func (c *frameConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.wbuf[:0]
	for i := 0; i < len(p); {
		if c.hleft > 0 {
			n := min(c.hleft, len(p)-i)
			c.holding = append(c.holding, p[i:i+n]...)
			c.hleft -= n
			i += n
			if c.hleft == 0 {
				out = append(out, c.rewriteSettingsLocked(c.holding)...)
				c.holding = nil
			}
			continue
		}
		if c.wleft > 0 {
			n := min(c.wleft, len(p)-i)
			out = append(out, p[i:i+n]...)
			c.wleft -= n
			i += n
			continue
		}
		if c.whn == 0 && c.first && len(c.inject) > 0 {
			out = append(out, c.inject...)
			c.inject = c.inject[:0]
		}
		n := copy(c.whdr[c.whn:], p[i:])
		c.whn += n
		i += n
		if c.whn < frameHeaderLen {
			continue
		}
		c.whn = 0
		length := int(c.whdr[0])<<16 | int(c.whdr[1])<<8 | int(c.whdr[2])
		if !c.first {
			c.first = true
			if c.whdr[3] == frameSettings && c.whdr[4]&flagAck == 0 {
				c.holding = append(make([]byte, 0, frameHeaderLen+length), c.whdr[:]...)
				c.hleft = length
				if length == 0 {
					out = append(out, c.rewriteSettingsLocked(c.holding)...)
					c.holding = nil
				}
				continue
			}
		}
		out = append(out, c.whdr[:]...)
		c.wleft = length
	}
	if c.whn == 0 && c.wleft == 0 && c.hleft == 0 && c.first && len(c.inject) > 0 {
		out = append(out, c.inject...)
		c.inject = c.inject[:0]
	}
	c.wbuf = out[:0]
	if len(out) > 0 {
		if _, err := c.Conn.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// rewriteSettingsLocked replaces the stream limit in the server's first
// SETTINGS by the one this connection starts with.
func (c *frameConn) rewriteSettingsLocked(f []byte) []byte {
	payload := f[frameHeaderLen:]
	out := make([]byte, frameHeaderLen, len(f)+6)
	copy(out, f[:frameHeaderLen])
	for i := 0; i+6 <= len(payload); i += 6 {
		if binary.BigEndian.Uint16(payload[i:]) == settingMaxConcurrentStreams {
			continue
		}
		out = append(out, payload[i:i+6]...)
	}
	out = binary.BigEndian.AppendUint16(out, settingMaxConcurrentStreams)
	out = binary.BigEndian.AppendUint32(out, c.advertised)
	n := len(out) - frameHeaderLen
	out[0], out[1], out[2] = byte(n>>16), byte(n>>8), byte(n)
	return out
}

// sendLocked writes a frame now if the server is between frames, or at
// the next boundary.
func (c *frameConn) sendLocked(frame []byte) {
	if c.whn == 0 && c.wleft == 0 && c.hleft == 0 && c.first {
		c.Conn.Write(frame) // a failed write shows on the server's next one
		return
	}
	c.inject = append(c.inject, frame...)
}

func appendFrameHeader(b []byte, length int, typ, flags byte, stream uint32) []byte {
	b = append(b, byte(length>>16), byte(length>>8), byte(length), typ, flags)
	return binary.BigEndian.AppendUint32(b, stream)
}

// setLimit advertises a new stream limit. A higher one applies at once
// (the server is lenient until the client has heard of it); a lower one
// once the client has acknowledged it.
func (c *frameConn) setLimit(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if uint32(n) == c.advertised {
		return
	}
	c.advertised = uint32(n)
	if int32(n) > c.limit.Load() {
		c.limit.Store(int32(n))
	}
	c.unacked = append(c.unacked, uint32(n))
	f := appendFrameHeader(nil, 6, frameSettings, 0, 0)
	f = binary.BigEndian.AppendUint16(f, settingMaxConcurrentStreams)
	c.sendLocked(binary.BigEndian.AppendUint32(f, uint32(n)))
}

// goAway tells the client that streams after the last one it opened will
// not be processed, as APNs does before it closes a connection, then
// closes the connection once the streams it still processes are answered.
func (c *frameConn) goAway(reason string) {
	c.mu.Lock()
	if c.goneAway {
		c.mu.Unlock()
		return
	}
	c.goneAway, c.goAwayID = true, c.lastStream
	debug, _ := json.Marshal(struct {
		Reason string `json:"reason"`
	}{reason})
	f := appendFrameHeader(nil, 8+len(debug), frameGoAway, 0, 0)
	f = binary.BigEndian.AppendUint32(f, c.goAwayID)
	f = binary.BigEndian.AppendUint32(f, 0) // NO_ERROR
	c.sendLocked(append(f, debug...))
	c.mu.Unlock()
	go func() {
		deadline := time.Now().Add(10 * time.Second)
		for c.active.Load() > 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond) // let the last answer leave
		c.netConn().Close()
	}()
}

// silence drops everything the client sends from now on: requests are
// never answered and PINGs never acknowledged, like a connection that
// died without a reset.
func (c *frameConn) silence() {
	c.mu.Lock()
	c.silent = true
	c.mu.Unlock()
}
