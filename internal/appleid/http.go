package appleid

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Apple's certificate service is talked to with a hand-written HTTP/1.1
// exchange instead of net/http: in 2023 the service sent header lines
// without a name ("1;: mode=block"), which net/http rejects since Go 1.20
// together with the whole response, after Apple had already issued the
// certificates. This reader skips such lines instead.

// Limits of the tolerant reader.
const (
	maxBody        = 1 << 20 // Apple's answer with five certificates is about 12 KiB
	maxLine        = 16 << 10
	maxHeaderBytes = 64 << 10
	maxInterim     = 8 // 1xx responses before the real one
	requestTimeout = 30 * time.Second
)

// userAgent is what macOS Server's servermgrd sent.
const userAgent = "Servermgrd%20Plugin/6.0 CFNetwork/811.11 Darwin/16.7.0 (x86_64)"

// httpResponse is a response read by readResponse.
type httpResponse struct {
	Status int
	Reason string
	Header map[string][]string // names in lower case
	Body   []byte
	// Skipped holds header lines that were not "Name: value" and were
	// ignored; the caller logs them.
	Skipped []string
}

// errBodyTooLarge is returned when the body exceeds maxBody.
var errBodyTooLarge = fmt.Errorf("response body larger than %d bytes", maxBody)

// post sends body to rawURL over TLS with Connection: close and reads the
// answer with readResponse. raw receives every byte read from the
// connection (up to maxBody plus the header limit), even when reading
// fails, so the caller can keep what Apple sent.
func post(ctx context.Context, rawURL string, body []byte, roots *x509.CertPool, raw *bytes.Buffer) (*httpResponse, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("certificate service URL %q: %w", rawURL, err)
	}
	if u.Scheme != "https" || u.Hostname() == "" {
		return nil, fmt.Errorf("certificate service URL %q: must be https://host/path", rawURL)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	d := &tls.Dialer{
		NetDialer: &net.Dialer{},
		Config:    &tls.Config{ServerName: u.Hostname(), RootCAs: roots, MinVersion: tls.VersionTLS12},
	}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer conn.Close()
	// The deadline bounds a peer that stalls; AfterFunc ends the exchange
	// at once when the daemon shuts down.
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	if u.RawQuery != "" {
		path += "?" + u.RawQuery
	}
	var req bytes.Buffer
	fmt.Fprintf(&req, "POST %s HTTP/1.1\r\n", path)
	fmt.Fprintf(&req, "Host: %s\r\n", u.Host)
	req.WriteString("Content-Type: text/x-xml-plist\r\n")
	req.WriteString("User-Agent: " + userAgent + "\r\n")
	req.WriteString("Accept: */*\r\n")
	req.WriteString("Accept-Language: en-us\r\n")
	fmt.Fprintf(&req, "Content-Length: %d\r\n", len(body))
	req.WriteString("Connection: close\r\n\r\n")
	req.Write(body)
	if _, err := conn.Write(req.Bytes()); err != nil {
		return nil, fmt.Errorf("send request to %s: %w", addr, ctxErr(ctx, err))
	}

	var src io.Reader = conn
	if raw != nil {
		src = io.TeeReader(conn, &cappedWriter{b: raw, max: maxBody + maxHeaderBytes})
	}
	resp, err := readResponse(bufio.NewReaderSize(src, 4096))
	if err != nil {
		return nil, fmt.Errorf("read answer from %s: %w", addr, ctxErr(ctx, err))
	}
	return resp, nil
}

// ctxErr prefers the context's reason over the closed-connection error it
// causes.
func ctxErr(ctx context.Context, err error) error {
	if ce := ctx.Err(); ce != nil {
		if errors.Is(ce, context.DeadlineExceeded) {
			return fmt.Errorf("no answer within %s: %w", requestTimeout, err)
		}
		return ce
	}
	return err
}

// cappedWriter keeps the first max bytes written to it.
type cappedWriter struct {
	b   *bytes.Buffer
	max int
}

func (w *cappedWriter) Write(p []byte) (int, error) {
	if room := w.max - w.b.Len(); room > 0 {
		w.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// readResponse reads one HTTP/1.x response. It is strict about what
// decides where the body is (status line, Content-Length, chunking) and
// lenient about everything else: header lines that are not "Name: value"
// with a token name are skipped, not fatal.
func readResponse(r *bufio.Reader) (*httpResponse, error) {
	headerBytes := 0
	for interim := 0; ; interim++ {
		line, err := readLine(r, &headerBytes)
		if err != nil {
			return nil, fmt.Errorf("status line: %w", err)
		}
		resp, err := parseStatusLine(line)
		if err != nil {
			return nil, err
		}
		if err := readHeader(r, resp, &headerBytes); err != nil {
			return nil, err
		}
		// 1xx answers (100 Continue) come before the real one.
		if resp.Status >= 100 && resp.Status < 200 {
			if interim >= maxInterim {
				return nil, errors.New("too many 1xx responses")
			}
			continue
		}
		if resp.Status == 204 || resp.Status == 304 {
			return resp, nil
		}
		resp.Body, err = readBody(r, resp.Header)
		if err != nil {
			return nil, err
		}
		return resp, nil
	}
}

func parseStatusLine(line string) (*httpResponse, error) {
	proto, rest, _ := strings.Cut(line, " ")
	if !strings.HasPrefix(proto, "HTTP/1.") {
		return nil, fmt.Errorf("not an HTTP/1.x status line: %s", clip(line))
	}
	code, reason, _ := strings.Cut(strings.TrimLeft(rest, " "), " ")
	n, err := strconv.Atoi(code)
	if err != nil || len(code) != 3 || n < 100 {
		return nil, fmt.Errorf("bad status code in %s", clip(line))
	}
	return &httpResponse{Status: n, Reason: strings.TrimSpace(reason), Header: map[string][]string{}}, nil
}

func readHeader(r *bufio.Reader, resp *httpResponse, headerBytes *int) error {
	for {
		line, err := readLine(r, headerBytes)
		if err != nil {
			return fmt.Errorf("header: %w", err)
		}
		if line == "" {
			return nil
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || !isToken(name) {
			// Includes obsolete folded continuation lines, which start
			// with white space; nothing xapsd reads is ever folded.
			resp.Skipped = append(resp.Skipped, line)
			continue
		}
		name = strings.ToLower(name)
		resp.Header[name] = append(resp.Header[name], strings.Trim(value, " \t"))
	}
}

// readLine reads a line ending in LF (CR LF or bare LF) and counts it
// against the header limit.
func readLine(r *bufio.Reader, total *int) (string, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		*total += len(chunk)
		if *total > maxHeaderBytes {
			return "", fmt.Errorf("header larger than %d bytes", maxHeaderBytes)
		}
		if len(line) > maxLine {
			return "", fmt.Errorf("line longer than %d bytes", maxLine)
		}
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) {
			return "", io.ErrUnexpectedEOF
		}
		return "", err
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	return string(line), nil
}

// isToken reports whether s is an RFC 9110 token, the only thing a header
// field name may be.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// readBody follows RFC 9112 §6.3: chunked wins over Content-Length, and
// without either the body runs to the end of the connection.
func readBody(r *bufio.Reader, h map[string][]string) ([]byte, error) {
	if te := h["transfer-encoding"]; len(te) > 0 {
		codings := strings.Split(strings.Join(te, ","), ",")
		last := strings.ToLower(strings.TrimSpace(codings[len(codings)-1]))
		if last != "chunked" {
			// Not chunked as the final coding: the body ends with the
			// connection. Anything else compressed is not asked for.
			return readToEOF(r)
		}
		return readChunked(r)
	}
	if cl := h["content-length"]; len(cl) > 0 {
		n, err := contentLength(cl)
		if err != nil {
			return nil, err
		}
		if n > maxBody {
			return nil, errBodyTooLarge
		}
		body := make([]byte, n)
		if got, err := io.ReadFull(r, body); err != nil {
			return nil, fmt.Errorf("body: %w after %d of %d bytes", io.ErrUnexpectedEOF, got, n)
		}
		return body, nil
	}
	return readToEOF(r)
}

// contentLength accepts repeated identical values ("12, 12" or two
// lines), which RFC 9112 allows, and nothing else.
func contentLength(values []string) (int64, error) {
	var n int64 = -1
	for _, v := range values {
		for _, p := range strings.Split(v, ",") {
			p = strings.TrimSpace(p)
			m, err := strconv.ParseInt(p, 10, 64)
			if err != nil || m < 0 || p[0] == '+' {
				return 0, fmt.Errorf("bad Content-Length %s", clip(v))
			}
			if n >= 0 && m != n {
				return 0, fmt.Errorf("conflicting Content-Length values %s", clip(strings.Join(values, ", ")))
			}
			n = m
		}
	}
	return n, nil
}

func readToEOF(r io.Reader) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(r, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("body: %w", err)
	}
	if len(body) > maxBody {
		return nil, errBodyTooLarge
	}
	return body, nil
}

func readChunked(r *bufio.Reader) ([]byte, error) {
	var body []byte
	lineBytes := 0
	for {
		line, err := readLine(r, &lineBytes)
		if err != nil {
			return nil, fmt.Errorf("chunk size: %w", err)
		}
		sizeText, _, _ := strings.Cut(line, ";")
		sizeText = strings.TrimSpace(sizeText)
		size, err := strconv.ParseUint(sizeText, 16, 32)
		if err != nil || sizeText == "" {
			return nil, fmt.Errorf("bad chunk size %s", clip(line))
		}
		if size == 0 {
			break
		}
		if uint64(len(body))+size > maxBody {
			return nil, errBodyTooLarge
		}
		start := len(body)
		body = append(body, make([]byte, size)...)
		if _, err := io.ReadFull(r, body[start:]); err != nil {
			return nil, fmt.Errorf("chunk: %w", io.ErrUnexpectedEOF)
		}
		crlf, err := readLine(r, &lineBytes)
		if err != nil || crlf != "" {
			return nil, errors.New("chunk not followed by CRLF")
		}
		// Each chunk-size line may use the whole line budget; every chunk
		// adds at least a byte towards maxBody, so the loop ends.
		lineBytes = 0
	}
	// Trailer fields are read and ignored; a peer that closes right after
	// the last chunk has still sent the whole body.
	trailer := 0
	for {
		line, err := readLine(r, &trailer)
		if err != nil || line == "" {
			return body, nil
		}
	}
}
