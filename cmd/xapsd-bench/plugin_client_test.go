package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

func TestPluginConnTalksToNetHTTP(t *testing.T) {
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Method != "POST" || r.Header.Get("Content-Type") != "application/json; charset=utf-8" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		switch string(body) {
		case `{"n":1}`:
			io.WriteString(w, "topic")
		case `{"close":true}`:
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusNoContent)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	c := newPluginConn(strings.TrimPrefix(srv.URL, "http://"))
	defer c.close()
	for i, tc := range []struct {
		body string
		want int
	}{{`{"n":1}`, 200}, {`{"n":2}`, 404}, {`{"n":1}`, 200}, {`{"close":true}`, 204}, {`{"n":1}`, 200}} {
		got, err := c.post("/notify", tc.body)
		if err != nil || got != tc.want {
			t.Fatalf("request %d: %d %v, want %d", i, got, err, tc.want)
		}
	}
	// One connection for the first four (keep-alive), a second after the
	// server said close.
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}

func TestReadResponseRejectsWhatItCannotFrame(t *testing.T) {
	for _, in := range []string{
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\n\r\n",
		"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
		"SMTP 220 hello\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
	} {
		if st, _, err := readResponse(bufio.NewReader(strings.NewReader(in))); err == nil {
			t.Errorf("%q: status %d, want an error", in, st)
		}
	}
}
