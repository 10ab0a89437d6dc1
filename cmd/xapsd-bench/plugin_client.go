package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// pluginConn is one keep-alive HTTP/1.1 connection to xapsd, used the way
// a Dovecot process's HTTP client uses it: write a request, read the
// answer, send the next.
//
// It is written against the socket instead of using net/http's client
// because that client spends two goroutines and their hand-offs on every
// request; on this two-core machine the generator's own overhead then ate
// a quarter of the CPU the daemon is measured with, a cost the plugin's
// C client in Dovecot does not have.
type pluginConn struct {
	addr string
	auth string // the Authorization header's value, when set
	conn net.Conn
	r    *bufio.Reader
	req  []byte
}

func newPluginConn(addr string) *pluginConn { return &pluginConn{addr: addr} }

// post sends one request and returns the answer's status. After an error
// the connection is closed; the next post dials again.
func (c *pluginConn) post(path, body string) (int, error) {
	if c.conn == nil {
		conn, err := net.DialTimeout("tcp", c.addr, 10*time.Second)
		if err != nil {
			return 0, err
		}
		c.conn, c.r = conn, bufio.NewReaderSize(conn, 4096)
	}
	c.req = append(c.req[:0], "POST "...)
	c.req = append(c.req, path...)
	c.req = append(c.req, " HTTP/1.1\r\nHost: "...)
	c.req = append(c.req, c.addr...)
	if c.auth != "" {
		c.req = append(c.req, "\r\nAuthorization: "...)
		c.req = append(c.req, c.auth...)
	}
	c.req = append(c.req, "\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: "...)
	c.req = strconv.AppendInt(c.req, int64(len(body)), 10)
	c.req = append(c.req, "\r\n\r\n"...)
	c.req = append(c.req, body...)
	c.conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.conn.Write(c.req); err != nil {
		c.close()
		return 0, err
	}
	status, keep, err := readResponse(c.r)
	if err != nil || !keep {
		c.close()
	}
	return status, err
}

func (c *pluginConn) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn, c.r = nil, nil
	}
}

// readResponse reads one HTTP/1.1 answer with a Content-Length body and
// discards the body. keep is false when the server closes the connection.
func readResponse(r *bufio.Reader) (status int, keep bool, err error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		return 0, false, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, false, fmt.Errorf("bad status line %q", line)
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, false, fmt.Errorf("bad status line %q", line)
	}
	length, keep := -1, true
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return 0, false, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return 0, false, fmt.Errorf("bad header line %q", line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(value)); err != nil || length < 0 {
				return 0, false, fmt.Errorf("bad Content-Length %q", value)
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			return 0, false, errors.New("chunked answers are not expected from xapsd")
		case bytes.EqualFold(name, []byte("Connection")) && bytes.EqualFold(value, []byte("close")):
			keep = false
		}
	}
	if status == http.StatusNoContent || status == http.StatusNotModified {
		length = 0 // no body, whatever the headers say
	}
	if length < 0 {
		return 0, false, errors.New("answer without Content-Length")
	}
	if _, err := r.Discard(length); err != nil {
		return 0, false, err
	}
	return status, keep, nil
}

// connPool lends pluginConns to concurrent requests, at most
// cap(slots) at a time, the most recently returned first.
type connPool struct {
	addr  string
	slots chan struct{}
	mu    sync.Mutex
	idle  []*pluginConn
}

func (p *connPool) get() *pluginConn {
	p.slots <- struct{}{}
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		return c
	}
	return newPluginConn(p.addr)
}

func (p *connPool) put(c *pluginConn) {
	p.mu.Lock()
	p.idle = append(p.idle, c)
	p.mu.Unlock()
	<-p.slots
}

func (p *connPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.idle {
		c.close()
	}
	p.idle = nil
}
