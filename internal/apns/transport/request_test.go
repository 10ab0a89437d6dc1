package transport

import (
	"net/http"
	"strings"
	"testing"

	"golang.org/x/net/http2/hpack"
)

// TestRequestCheckRefusesWhatAHeaderBlockCannotCarry: a request with a
// field a server would take as a protocol error (or a name that HTTP/2
// requires in lower case) fails before it is sent.
func TestRequestCheckRefusesWhatAHeaderBlockCannotCarry(t *testing.T) {
	good := func() *Request {
		r := &Request{Authority: "api.push.apple.com", Path: "/3/device/ab"}
		r.Add("apns-topic", "com.apple.mail.XServer.x")
		return r
	}
	if err := good().check(); err != nil {
		t.Fatalf("a push's request refused: %v", err)
	}
	for name, change := range map[string]func(*Request){
		"upper-case name":   func(r *Request) { r.Add("Apns-Topic", "x") },
		"name with a space": func(r *Request) { r.Add("apns topic", "x") },
		"value with CR LF":  func(r *Request) { r.Add("apns-topic", "x\r\nx-injected: 1") },
		"value with NUL":    func(r *Request) { r.Add("apns-topic", "x\x00") },
		"path with a space": func(r *Request) { r.Path = "/3/device/a b" },
		"empty path":        func(r *Request) { r.Path = "" },
		"bad authority":     func(r *Request) { r.Authority = "api push" },
	} {
		r := good()
		change(r)
		if err := r.check(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestRequestFromAnHTTPRequest: RoundTrip sends what net/http would: the
// header in lower case without HTTP/1's connection fields, the body
// whole, apns-id as a field of its own.
func TestRequestFromAnHTTPRequest(t *testing.T) {
	req, err := http.NewRequest(http.MethodPost, "https://api.push.apple.com:2197/3/device/ab?x=1", strings.NewReader(`{"aps":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Apns-Topic", "t")
	req.Header.Set("Apns-Id", "id")
	req.Header.Set("Connection", "keep-alive")
	req.Header.Set("Content-Length", "999")
	r, err := requestFrom(req)
	if err != nil {
		t.Fatal(err)
	}
	if r.Method != "POST" || r.Authority != "api.push.apple.com:2197" || r.Path != "/3/device/ab?x=1" || string(r.Body) != `{"aps":{}}` {
		t.Errorf("request %+v", r)
	}
	got := map[string]Field{}
	for _, f := range r.Fields {
		got[f.Name] = f
	}
	if len(got) != 2 || got["apns-topic"].Value != "t" || got["apns-topic"].Unique || !got["apns-id"].Unique {
		t.Errorf("fields %+v, want apns-topic and apns-id (unique) only", r.Fields)
	}
}

// TestResponseGetAndHTTPResponse: the pusher reads a field by its name,
// RoundTrip gives net/http's form of the same answer.
func TestResponseGetAndHTTPResponse(t *testing.T) {
	r := &Response{Status: 410, Header: []hpack.HeaderField{{Name: "apns-id", Value: "a"}, {Name: "apns-id", Value: "b"}},
		Body: []byte(`{"reason":"Unregistered"}`)}
	if r.Get("apns-id") != "a" || r.Get("apns-unique-id") != "" {
		t.Errorf("Get: %q, %q", r.Get("apns-id"), r.Get("apns-unique-id"))
	}
	h := r.httpResponse(nil)
	if h.StatusCode != 410 || h.Status != "410 Gone" || h.ContentLength != int64(len(r.Body)) || len(h.Header["Apns-Id"]) != 2 {
		t.Errorf("http response %+v", h)
	}
	if e := (&Response{Status: 200}).httpResponse(nil); e.Body != http.NoBody || e.ContentLength != 0 {
		t.Errorf("empty answer: body %v, length %d", e.Body, e.ContentLength)
	}
}
