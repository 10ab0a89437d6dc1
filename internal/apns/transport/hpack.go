package transport

import (
	"bytes"

	"golang.org/x/net/http2/hpack"
)

// headerEncoder writes a connection's request header blocks.
//
// A push repeats most of its fields (method, authority, topic, push type,
// the bearer) and differs in its path, the device's. hpack.Encoder looks
// every field up in two hash tables, and indexing each path would evict
// an entry on every push. Here a repeated field goes through
// hpack.Encoder until the table holds it, and from then on its one or
// two bytes are copied from a short list; the path is sent as a literal
// that is never indexed (what intermediaries must keep it as, too), so
// the table changes only when a repeated field is new (a new bearer, a
// new expiration second) and the list is learned again.
type headerEncoder struct {
	enc   *hpack.Encoder
	buf   bytes.Buffer
	known []knownField // what the table holds now, by representation
}

// knownField is a field and its representation as an index.
type knownField struct {
	name, value string
	rep         []byte
}

// maxKnown bounds the list: a push has about ten fields.
const maxKnown = 32

func newHeaderEncoder() *headerEncoder {
	e := &headerEncoder{}
	e.enc = hpack.NewEncoder(&e.buf)
	return e
}

// start begins a header block.
func (e *headerEncoder) start() { e.buf.Reset() }

// block is the header block written since start, valid until the next.
func (e *headerEncoder) block() []byte { return e.buf.Bytes() }

// setMaxTableSize takes the server's SETTINGS_HEADER_TABLE_SIZE. The
// encoder says so at the start of its next block, which comes from
// hpack.Encoder since the list is forgotten.
func (e *headerEncoder) setMaxTableSize(v uint32) {
	e.enc.SetMaxDynamicTableSizeLimit(v)
	e.known = e.known[:0]
}

// repeated writes a field that recurs from push to push.
func (e *headerEncoder) repeated(name, value string) {
	for i := range e.known {
		if k := &e.known[i]; k.name == name && k.value == value {
			e.buf.Write(k.rep)
			return
		}
	}
	from := e.buf.Len()
	e.enc.WriteField(hpack.HeaderField{Name: name, Value: value})
	rep := e.buf.Bytes()[from:]
	if rep[0]&0x80 == 0 {
		// Not an index: the field was added to the table (or a table
		// size update came first), so every index known has moved.
		e.known = e.known[:0]
		return
	}
	if len(e.known) < maxKnown {
		e.known = append(e.known, knownField{name: name, value: value, rep: bytes.Clone(rep)})
	}
}

// unique writes a field that differs on every push as a literal never
// indexed, its name by its static table index when it has one (0 when
// not).
func (e *headerEncoder) unique(name string, staticIndex uint64, value string) {
	b := e.buf.AvailableBuffer()
	if staticIndex > 0 {
		b = appendHpackInt(b, 4, 0x10, staticIndex)
	} else {
		b = append(b, 0x10)
		b = appendHpackString(b, name)
	}
	b = appendHpackString(b, value)
	e.buf.Write(b)
}

// staticPath is :path's index in HPACK's static table (RFC 7541,
// appendix A).
const staticPath = 4

// appendHpackInt appends i with an n-bit prefix, the first byte's other
// bits being first's (RFC 7541, 5.1).
func appendHpackInt(dst []byte, n uint, first byte, i uint64) []byte {
	max := uint64(1)<<n - 1
	if i < max {
		return append(dst, first|byte(i))
	}
	dst = append(dst, first|byte(max))
	for i -= max; i >= 128; i >>= 7 {
		dst = append(dst, byte(0x80|i&0x7f))
	}
	return append(dst, byte(i))
}

// appendHpackString appends s as a raw string literal (RFC 7541, 5.2):
// a device's path is hex, which Huffman coding would barely shorten.
func appendHpackString(dst []byte, s string) []byte {
	dst = appendHpackInt(dst, 7, 0, uint64(len(s)))
	return append(dst, s...)
}
