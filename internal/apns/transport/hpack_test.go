package transport

import (
	"fmt"
	"reflect"
	"testing"

	"golang.org/x/net/http2/hpack"
)

// TestHeaderEncoderBlocksDecodeToTheirFields: what a decoder that saw
// every block in order reads from each is what was written, across new
// bearers (the table changes), table size changes and long values, and
// the path is a never-indexed literal that leaves the table alone.
func TestHeaderEncoderBlocksDecodeToTheirFields(t *testing.T) {
	e := newHeaderEncoder()
	dec := hpack.NewDecoder(4096, nil)
	long := make([]byte, 300)
	for i := range long {
		long[i] = 'a' + byte(i%26)
	}
	for i := range 400 {
		bearer := fmt.Sprintf("bearer token-%d", i/50)
		if i%97 == 96 {
			bearer += string(long) // over the 127 of a one-byte length
		}
		if i == 150 {
			e.setMaxTableSize(256)
			dec.SetAllowedMaxDynamicTableSize(256)
		}
		want := []hpack.HeaderField{
			{Name: ":authority", Value: "api.push.apple.com"},
			{Name: ":method", Value: "POST"},
			{Name: ":path", Value: fmt.Sprintf("/3/device/%064x", i), Sensitive: true},
			{Name: ":scheme", Value: "https"},
			{Name: "authorization", Value: bearer},
			{Name: "apns-expiration", Value: fmt.Sprint(1700000000 + i/30)},
			{Name: "apns-id", Value: fmt.Sprintf("id-%d", i), Sensitive: true},
			{Name: "content-length", Value: fmt.Sprint(100 + i%3)},
		}
		e.start()
		for _, f := range want {
			switch {
			case f.Name == ":path":
				e.unique(f.Name, staticPath, f.Value)
			case f.Sensitive:
				e.unique(f.Name, 0, f.Value)
			default:
				e.repeated(f.Name, f.Value)
			}
		}
		got, err := dec.DecodeFull(e.block())
		if err != nil {
			t.Fatalf("push %d: decoding: %v", i, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("push %d: decoded\n%v\nwant\n%v", i, got, want)
		}
	}
}

// TestHeaderEncoderSendsARepeatedFieldAsAnIndex: once the table holds a
// field, a block carries it in a byte or two.
func TestHeaderEncoderSendsARepeatedFieldAsAnIndex(t *testing.T) {
	e := newHeaderEncoder()
	sizes := []int{}
	for range 3 {
		e.start()
		e.repeated("apns-topic", "com.apple.mail.XServer.0123456789abcdef")
		e.repeated("authorization", "bearer 0123456789012345678901234567890123456789")
		sizes = append(sizes, len(e.block()))
	}
	if sizes[1] != 2 || sizes[2] != 2 {
		t.Fatalf("block sizes %v: want two one-byte indexes once the table holds the fields", sizes)
	}
}

func TestAppendHpackIntMatchesRFC7541Examples(t *testing.T) {
	// RFC 7541, C.1: 10 with a 5-bit prefix, 1337 with a 5-bit prefix,
	// 42 with an 8-bit prefix.
	for _, c := range []struct {
		n    uint
		i    uint64
		want []byte
	}{{5, 10, []byte{10}}, {5, 1337, []byte{31, 154, 10}}, {8, 42, []byte{42}}} {
		if got := appendHpackInt(nil, c.n, 0, c.i); !reflect.DeepEqual(got, c.want) {
			t.Errorf("appendHpackInt(%d, %d) = %v, want %v", c.n, c.i, got, c.want)
		}
	}
}
