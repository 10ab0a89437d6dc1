package transport

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"
)

// Request is one request as a connection sends it: a push is built as
// one directly (Pool.Push), without the http.Request, URL and header map
// that RoundTrip converts from.
type Request struct {
	Method    string // "" is POST
	Authority string // host[:port]: the :authority, and where to connect
	Path      string
	Fields    []Field // header fields after the pseudo-headers, in order
	Body      []byte  // sent again as it is if the request is retried

	fields [10]Field // room for a push's Fields without another allocation
}

// Field is a request header field.
type Field struct {
	Name  string // lower-case
	Value string
	// Unique marks a value that differs on every request (an apns-id):
	// it is sent never indexed instead of filling the HPACK table.
	Unique bool
}

// Add appends a header field; name must be lower-case.
func (r *Request) Add(name, value string) {
	if r.Fields == nil {
		r.Fields = r.fields[:0]
	}
	r.Fields = append(r.Fields, Field{Name: name, Value: value})
}

// check says whether the request can be put in a header block.
func (r *Request) check() error {
	if !httpguts.ValidHostHeader(r.Authority) || !validPath(r.Path) {
		return fmt.Errorf("http2: invalid host or path in request to %q", r.Authority)
	}
	for _, f := range r.Fields {
		if !httpguts.ValidHeaderFieldName(f.Name) || strings.ToLower(f.Name) != f.Name {
			return fmt.Errorf("http2: invalid header field name %q", f.Name)
		}
		if !httpguts.ValidHeaderFieldValue(f.Value) {
			return fmt.Errorf("http2: invalid value for header %q", f.Name)
		}
	}
	return nil
}

// validPath: what may go in :path (no spaces or control characters).
func validPath(p string) bool {
	if p == "" {
		return false
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// Response is an answer, whole.
type Response struct {
	Status int
	Header []hpack.HeaderField // as received, names lower-case
	Body   []byte
}

// Get returns the first value of a header field (lower-case name), or "".
func (r *Response) Get(name string) string {
	for _, f := range r.Header {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// Header fields RoundTrip does not carry over: HTTP/1's connection
// handling, and the length, which the body gives.
var skippedFields = map[string]bool{
	"host": true, "content-length": true, "connection": true, "proxy-connection": true,
	"transfer-encoding": true, "upgrade": true, "keep-alive": true, "te": true,
}

// requestFrom converts an http.Request (read whole, its body closed);
// Push checks the result.
func requestFrom(req *http.Request) (*Request, error) {
	r := &Request{Method: req.Method, Authority: req.Host, Path: req.URL.RequestURI()}
	if r.Method == "" {
		r.Method = http.MethodGet
	}
	if r.Authority == "" {
		r.Authority = req.URL.Host
	}
	for k, vv := range req.Header {
		name := strings.ToLower(k)
		if skippedFields[name] {
			continue
		}
		for _, v := range vv {
			r.Fields = append(r.Fields, Field{Name: name, Value: v, Unique: name == "apns-id"})
		}
	}
	body, err := requestBody(req)
	if err != nil {
		return nil, err
	}
	r.Body = body
	return r, nil
}

// requestBody reads an http.Request's body.
func requestBody(req *http.Request) ([]byte, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return nil, nil
	}
	defer req.Body.Close()
	const maxRequestBody = 1 << 20
	if n := req.ContentLength; n > 0 && n <= maxRequestBody {
		b := make([]byte, n)
		if _, err := io.ReadFull(req.Body, b); err != nil {
			return nil, fmt.Errorf("http2: reading the request body: %w", err)
		}
		return b, nil
	}
	b, err := io.ReadAll(io.LimitReader(req.Body, maxRequestBody+1))
	if err != nil {
		return nil, fmt.Errorf("http2: reading the request body: %w", err)
	}
	if len(b) > maxRequestBody {
		return nil, errors.New("http2: request body too large")
	}
	return b, nil
}

// httpResponse is r as net/http gives an answer to req.
func (r *Response) httpResponse(req *http.Request) *http.Response {
	h := make(http.Header, len(r.Header))
	for _, f := range r.Header {
		k := http.CanonicalHeaderKey(f.Name)
		h[k] = append(h[k], f.Value)
	}
	resp := &http.Response{StatusCode: r.Status, Status: fmt.Sprintf("%d %s", r.Status, http.StatusText(r.Status)),
		Proto: "HTTP/2.0", ProtoMajor: 2, Header: h, ContentLength: int64(len(r.Body)), Request: req, Body: http.NoBody}
	if len(r.Body) > 0 {
		resp.Body = io.NopCloser(bytes.NewReader(r.Body))
	}
	return resp
}
