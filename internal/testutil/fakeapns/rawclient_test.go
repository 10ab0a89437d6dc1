package fakeapns

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawClient is a lean HTTP/2 client on one connection, built on the
// framer: it batches frames into few writes and keeps no per-request
// goroutine, so a benchmark measures the server rather than
// net/http's client.
type rawClient struct {
	conn *tls.Conn
	fr   *http2.Framer
	bw   *bufio.Writer
	host string

	mu       sync.Mutex
	cond     *sync.Cond
	window   int64 // connection send window
	failed   error
	done     atomic.Int64
	non200   atomic.Int64
	inFlight int

	settings     chan struct{} // closed when the server's first SETTINGS arrived
	settingsOnce sync.Once
	maxStreams   uint32 // the server's SETTINGS_MAX_CONCURRENT_STREAMS, 0 if unset
}

func dialRaw(s *Server) (*rawClient, error) {
	host := strings.TrimPrefix(s.URL, "https://")
	conn, err := tls.Dial("tcp", host, &tls.Config{RootCAs: s.CertPool(), NextProtos: []string{"h2"}})
	if err != nil {
		return nil, err
	}
	c := &rawClient{conn: conn, bw: bufio.NewWriterSize(conn, 64<<10), host: host, window: 65535, settings: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	c.fr = http2.NewFramer(c.bw, bufio.NewReaderSize(conn, 64<<10))
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if _, err := c.bw.WriteString(http2.ClientPreface); err != nil {
		return nil, err
	}
	if err := c.fr.WriteSettings(); err != nil {
		return nil, err
	}
	if err := c.bw.Flush(); err != nil {
		return nil, err
	}
	go c.readLoop()
	return c, nil
}

func (c *rawClient) fail(err error) {
	c.mu.Lock()
	if c.failed == nil {
		c.failed = err
	}
	c.cond.Broadcast()
	c.mu.Unlock()
}

func (c *rawClient) readLoop() {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.fail(err)
			return
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.PseudoValue("status") != "200" {
				c.non200.Add(1)
			}
			if f.StreamEnded() {
				c.finish()
			}
		case *http2.DataFrame:
			if f.StreamEnded() {
				c.finish()
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				c.mu.Lock()
				c.window += int64(f.Increment)
				c.cond.Broadcast()
				c.mu.Unlock()
			}
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.settingsOnce.Do(func() {
					c.maxStreams, _ = f.Value(http2.SettingMaxConcurrentStreams)
					close(c.settings)
				})
				c.mu.Lock()
				err = c.fr.WriteSettingsAck()
				if err == nil {
					err = c.bw.Flush()
				}
				c.mu.Unlock()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				c.mu.Lock()
				err = c.fr.WritePing(true, f.Data)
				if err == nil {
					err = c.bw.Flush()
				}
				c.mu.Unlock()
			}
		case *http2.RSTStreamFrame:
			c.non200.Add(1)
			c.finish()
		case *http2.GoAwayFrame:
			c.fail(fmt.Errorf("GOAWAY %v", f.ErrCode))
			return
		}
		if err != nil {
			c.fail(err)
			return
		}
	}
}

func (c *rawClient) finish() {
	c.done.Add(1)
	c.mu.Lock()
	c.inFlight--
	c.cond.Broadcast()
	c.mu.Unlock()
}

// run sends n POSTs keeping at most inFlight open, flushing only when it
// has to wait, and returns when all are answered.
func (c *rawClient) run(n, inFlight int, path string, payload []byte) error {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	stream := uint32(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	for sent := 0; sent < n; sent++ {
		for c.failed == nil && (c.inFlight >= inFlight || c.window < int64(len(payload))) {
			if err := c.bw.Flush(); err != nil {
				return err
			}
			c.cond.Wait()
		}
		if c.failed != nil {
			return c.failed
		}
		hb.Reset()
		for _, kv := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":authority", c.host}, {":path", path},
			{"content-type", "application/json; charset=utf-8"}, {"apns-topic", topic}, {"apns-push-type", "background"},
			{"content-length", strconv.Itoa(len(payload))}} {
			enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
		}
		if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
			return err
		}
		if err := c.fr.WriteData(stream, true, payload); err != nil {
			return err
		}
		stream += 2
		c.inFlight++
		c.window -= int64(len(payload))
	}
	if err := c.bw.Flush(); err != nil {
		return err
	}
	for c.failed == nil && c.inFlight > 0 {
		c.cond.Wait()
	}
	return c.failed
}

// BenchmarkServerRaw measures what the server can take: 500 requests in
// flight on one connection from a client that costs little.
func BenchmarkServerRaw(b *testing.B) {
	s, err := Start(Options{NoRecord: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	c, err := dialRaw(s)
	if err != nil {
		b.Fatal(err)
	}
	defer c.conn.Close()
	payload := []byte(`{"aps":{"account-id":"0715A26B-CA09-4730-A419-793000CA982E"}}`)
	b.ResetTimer()
	begin := time.Now()
	if err := c.run(b.N, 500, "/3/device/"+token1, payload); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/time.Since(begin).Seconds(), "req/s")
	if n := c.non200.Load(); n > 0 || c.done.Load() != int64(b.N) || s.Count() != int64(b.N) {
		b.Fatalf("%d non-200, %d answered, %d counted of %d", n, c.done.Load(), s.Count(), b.N)
	}
}

// TestRawClientGetsEveryRequestAnsweredAndCounted keeps the benchmark client honest: every request is
// answered and counted.
func TestRawClientGetsEveryRequestAnsweredAndCounted(t *testing.T) {
	s := StartT(t, Options{})
	c, err := dialRaw(s)
	if err != nil {
		t.Fatal(err)
	}
	defer c.conn.Close()
	if err := c.run(2000, 500, "/3/device/"+token1, []byte(`{"aps":{}}`)); err != nil {
		t.Fatal(err)
	}
	if c.done.Load() != 2000 || c.non200.Load() != 0 || s.Count() != 2000 {
		t.Fatalf("answered %d, non-200 %d, counted %d", c.done.Load(), c.non200.Load(), s.Count())
	}
	if r := s.Requests()[1999]; string(r.Body) != `{"aps":{}}` || r.Topic != topic {
		t.Errorf("last request %+v", r)
	}
}
