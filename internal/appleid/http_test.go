package appleid

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func read(s string) (*httpResponse, error) {
	return readResponse(bufio.NewReader(strings.NewReader(s)))
}

func TestReadResponse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		status  int
		body    string
		skipped []string
		header  map[string][]string
	}{
		{"content length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello and more", 200, "hello", nil, nil},
		{"apple's malformed lines of 2023",
			"HTTP/1.1 200 OK\r\nServer: Apple\r\n1;: mode=block\r\nmax-age=31536000;: includeSubdomains\r\nContent-Length: 2\r\n\r\nok",
			200, "ok", []string{"1;: mode=block", "max-age=31536000;: includeSubdomains"},
			map[string][]string{"server": {"Apple"}, "content-length": {"2"}}},
		{"line without colon, space in name, folded line", "HTTP/1.1 200 OK\r\nno colon here\r\nBad Name: x\r\nA: 1\r\n  folded\r\nContent-Length: 1\r\n\r\nx",
			200, "x", []string{"no colon here", "Bad Name: x", "  folded"}, map[string][]string{"a": {"1"}, "content-length": {"1"}}},
		{"empty name", "HTTP/1.1 200 OK\r\n: value\r\nContent-Length: 0\r\n\r\n", 200, "", []string{": value"}, nil},
		{"bare LF", "HTTP/1.1 200 OK\nContent-Length: 3\n\nabc", 200, "abc", nil, nil},
		{"HTTP/1.0 and no reason", "HTTP/1.0 200\r\n\r\nto the end", 200, "to the end", nil, nil},
		{"read to EOF", "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it\r\n", 200, "all of it\r\n", nil, nil},
		{"chunked with extension and trailer", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\nA\r\n, world!!!\r\n0\r\nX-Trailer: 1\r\n\r\n",
			200, "hello, world!!!", nil, nil},
		{"chunked without final CRLF", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n", 200, "ok", nil, nil},
		{"chunked wins over length", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 200, "ok", nil, nil},
		{"other transfer coding reads to EOF", "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nraw", 200, "raw", nil, nil},
		{"repeated equal lengths", "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nokay", 200, "ok", nil, nil},
		{"100 continue first", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, "ok", nil, nil},
		{"204 has no body", "HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n", 204, "", nil, nil},
		{"error status", "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy", 503, "busy", nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := read(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if r.Status != tc.status || string(r.Body) != tc.body {
				t.Errorf("status %d body %q", r.Status, r.Body)
			}
			if !reflect.DeepEqual(r.Skipped, tc.skipped) {
				t.Errorf("skipped %q, want %q", r.Skipped, tc.skipped)
			}
			if tc.header != nil && !reflect.DeepEqual(r.Header, tc.header) {
				t.Errorf("header %q, want %q", r.Header, tc.header)
			}
		})
	}
}

func TestReadResponseErrors(t *testing.T) {
	big := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", maxBody+1)
	tests := []struct{ name, in, want string }{
		{"empty", "", "status line"},
		{"not http", "SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x status line"},
		{"http/2 preface", "PRI * HTTP/2.0\r\n\r\n", "not an HTTP/1.x status line"},
		{"bad code", "HTTP/1.1 2000 OK\r\n\r\n", "bad status code"},
		{"word code", "HTTP/1.1 abc OK\r\n\r\n", "bad status code"},
		{"header cut", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", "unexpected EOF"},
		{"body cut", "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", "unexpected EOF after 5 of 50 bytes"},
		{"conflicting lengths", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", "conflicting Content-Length"},
		{"negative length", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"},
		{"plus length", "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx", "bad Content-Length"},
		{"length too large", big, "larger than"},
		{"chunk size junk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"},
		{"chunk cut", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc", "chunk"},
		{"chunk without CRLF", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n0\r\n\r\n", "not followed by CRLF"},
		{"chunks too large", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + fmt.Sprintf("%x", maxBody+1) + "\r\n", "larger than"},
		{"endless 100s", strings.Repeat("HTTP/1.1 100 Continue\r\n\r\n", maxInterim+2), "too many 1xx"},
		{"long line", "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", maxLine) + "\r\n\r\n", "longer than"},
		{"huge header", "HTTP/1.1 200 OK\r\n" + strings.Repeat("X: "+strings.Repeat("a", 1000)+"\r\n", 70) + "\r\n", "header larger than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := read(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %+v, %v; want error with %q", r, err, tc.want)
			}
		})
	}
	// A body running to EOF past the cap.
	huge := io.MultiReader(strings.NewReader("HTTP/1.1 200 OK\r\n\r\n"), io.LimitReader(zeros{}, maxBody+10))
	if _, err := readResponse(bufio.NewReader(huge)); !errors.Is(err, errBodyTooLarge) {
		t.Errorf("body past the cap: %v", err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestIsToken(t *testing.T) {
	for s, want := range map[string]bool{
		"Content-Length": true, "X-Apple_1!#$%&'*+.^`|~": true,
		"": false, "1;": false, "max-age=31536000;": false, "a b": false, "a\tb": false, "ä": false, "a:b": false,
	} {
		if isToken(s) != want {
			t.Errorf("isToken(%q) = %v", s, !want)
		}
	}
}

// rawServer accepts TLS connections and hands each to serve.
func rawServer(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	fx := getFixture(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{fx.server.TLSCertificate()}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ln.Addr().String()
}

func TestPostSendsTheRequestAsApplesClientDoesToATrustedServerOnly(t *testing.T) {
	fx := getFixture(t)
	var got bytes.Buffer
	received := make(chan struct{})
	var conns atomic.Int32
	addr := rawServer(t, func(c net.Conn) {
		if conns.Add(1) > 1 {
			return // the later connections only test refusals
		}
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			got.WriteString(line)
			if err != nil || line == "\r\n" {
				break
			}
		}
		body := make([]byte, 4)
		io.ReadFull(r, body)
		got.Write(body)
		close(received)
		c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	})
	var raw bytes.Buffer
	resp, err := post(context.Background(), "https://"+addr+"/pushcert/caservice/new?x=1", []byte("body"), fx.ca.CertPool(), &raw)
	if err != nil {
		t.Fatal(err)
	}
	<-received
	if string(resp.Body) != "ok" || raw.String() != "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" {
		t.Errorf("body %q, raw %q", resp.Body, raw.String())
	}
	want := "POST /pushcert/caservice/new?x=1 HTTP/1.1\r\nHost: " + addr + "\r\nContent-Type: text/x-xml-plist\r\n" +
		"User-Agent: Servermgrd%20Plugin/6.0 CFNetwork/811.11 Darwin/16.7.0 (x86_64)\r\nAccept: */*\r\n" +
		"Accept-Language: en-us\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody"
	if got.String() != want {
		t.Errorf("request\n%q\nwant\n%q", got.String(), want)
	}

	// An untrusted server is refused before anything is sent.
	if _, err := post(context.Background(), "https://"+addr+"/x", nil, nil, nil); err == nil {
		t.Error("connected to a server signed by an unknown CA")
	}
	for _, u := range []string{"http://" + addr + "/x", "https:///x", "::"} {
		if _, err := post(context.Background(), u, nil, fx.ca.CertPool(), nil); err == nil {
			t.Errorf("%q accepted", u)
		}
	}
}

// TestPostCancel: a server that never answers does not hold the daemon's
// shutdown.
func TestPostCancel(t *testing.T) {
	fx := getFixture(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	addr := rawServer(t, func(c net.Conn) {
		io.Copy(io.Discard, io.LimitReader(c, 1<<20))
		<-release
	})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	_, err := post(ctx, "https://"+addr+"/x", []byte("x"), fx.ca.CertPool(), nil)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v after cancel", d)
	}
}
