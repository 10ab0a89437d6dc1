package appleid

import (
	"bufio"
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// Seeds shared by the fuzz targets: what Apple sent, what it sends now,
// and the shapes the readers special-case.
var responseSeeds = []string{
	"HTTP/1.1 200 OK\r\nServer: Apple\r\n1;: mode=block\r\nmax-age=31536000;: includeSubdomains\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nContent-Length: " + fmt.Sprint(len(discontinuedAnswer)) + "\r\n\r\n" + discontinuedAnswer,
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n",
	"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 500\r\n\r\nbody to EOF",
	"HTTP/1.1 200 OK\nContent-Length: 1, 1\n\nx",
	"HTTP/1.1 204 No Content\r\n\r\n",
}

// FuzzReadResponse: the tolerant reader never panics, honours its caps,
// and a body it returns is what the framing said.
func FuzzReadResponse(f *testing.F) {
	for _, s := range responseSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := readResponse(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			return
		}
		if r.Status < 100 || r.Status > 999 || len(r.Body) > maxBody {
			t.Fatalf("status %d, body %d bytes", r.Status, len(r.Body))
		}
		if len(r.Body) > len(in) {
			t.Fatal("body longer than the input")
		}
		for name := range r.Header {
			if !isToken(name) || name != strings.ToLower(name) {
				t.Fatalf("header name %q", name)
			}
		}
	})
}

// FuzzSkippedHeaderLines: lines that are not "Name: value" never change
// the body of an otherwise good answer (docs/protocol.md#apple-malformed-headers).
func FuzzSkippedHeaderLines(f *testing.F) {
	f.Add("1;: mode=block", []byte("<plist/>"))
	f.Add("max-age=31536000;: includeSubdomains", []byte{})
	f.Add("no colon", []byte("x"))
	f.Add(" folded: line", []byte("y"))
	f.Fuzz(func(t *testing.T, junk string, body []byte) {
		if strings.ContainsAny(junk, "\r\n") || junk == "" || len(body) > maxBody {
			return
		}
		if name, _, ok := strings.Cut(junk, ":"); ok && isToken(name) {
			return // a real header line, not junk
		}
		in := fmt.Sprintf("HTTP/1.1 200 OK\r\n%s\r\nContent-Length: %d\r\n%s\r\n\r\n%s", junk, len(body), junk, body)
		r, err := readResponse(bufio.NewReader(strings.NewReader(in)))
		if err != nil {
			if len(junk) > maxLine-10 {
				return
			}
			t.Fatalf("junk line %q broke the answer: %v", junk, err)
		}
		if !bytes.Equal(r.Body, body) || len(r.Skipped) != 2 {
			t.Fatalf("junk line %q: body %q, skipped %q", junk, r.Body, r.Skipped)
		}
	})
}

// FuzzParseAnswer: the answer parser never panics and only hands out
// certificates for the five numbers it asked for.
func FuzzParseAnswer(f *testing.F) {
	f.Add([]byte(discontinuedAnswer))
	f.Add([]byte(stubAnswer(nil)))
	f.Add([]byte(`<plist><dict><key>Certificates</key><array><dict><key>CertRequestNo</key><string>2</string>` +
		`<key>Certificate</key><data>MAA=</data></dict></array></dict></plist>`))
	f.Add([]byte(`<plist><dict><key>Status</key><dict><key>ErrorCode</key><string>-80010</string></dict></dict></plist>`))
	f.Fuzz(func(t *testing.T, in []byte) {
		certs, _, err := parseAnswer(in)
		if err != nil {
			return
		}
		for no, c := range certs {
			if no < 0 || no >= len(services) || c.No != no || c.Cert == nil {
				t.Fatalf("certificate %d: %+v", no, c)
			}
		}
	})
}

// FuzzPlistRoundTrip: whatever decodes and can be encoded again decodes
// to the same value.
func FuzzPlistRoundTrip(f *testing.F) {
	f.Add([]byte(discontinuedAnswer))
	f.Add([]byte(`<plist><array><data>aGVs bG8=</data><integer>-1</integer><string><![CDATA[x]]>&amp;&#13;</string><true/></array></plist>`))
	f.Fuzz(func(t *testing.T, in []byte) {
		v, err := decodePlist(in)
		if err != nil {
			return
		}
		enc, err := encodePlist(v)
		if err != nil {
			return // reals, control characters: never in what xapsd sends
		}
		w, err := decodePlist(enc)
		if err != nil {
			t.Fatalf("re-decode: %v\n%s", err, enc)
		}
		if !reflect.DeepEqual(v, w) {
			t.Fatalf("round trip changed %#v into %#v", v, w)
		}
	})
}
