// Package plainjson reads the plain JSON that xapsd's own writers and the
// Dovecot plugin produce (objects of strings without escapes, arrays of
// such strings) without encoding/json's reflection. It only says whether
// the input is in that plain form; its callers hand anything else to
// encoding/json, so what they accept is always what encoding/json makes
// of it, and their fuzz targets hold them to that.
package plainjson

// Scanner reads b from the start. b must be valid UTF-8: a string's bytes
// are taken as they are, where encoding/json would replace invalid ones.
type Scanner struct {
	b []byte
	i int
}

// NewScanner reads b, which must be valid UTF-8.
func NewScanner(b []byte) Scanner { return Scanner{b: b} }

// space skips JSON white space.
func (s *Scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// Next consumes c after white space, if it is there.
func (s *Scanner) Next(c byte) bool {
	s.space()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// End reports whether only white space is left.
func (s *Scanner) End() bool {
	s.space()
	return s.i == len(s.b)
}

// Bytes reads a string without escapes (or control characters, which
// JSON forbids in strings) after white space, and returns its content,
// which shares b's memory.
func (s *Scanner) Bytes() ([]byte, bool) {
	if !s.Next('"') {
		return nil, false
	}
	start := s.i
	for ; s.i < len(s.b); s.i++ {
		switch c := s.b[s.i]; {
		case c == '"':
			v := s.b[start:s.i]
			s.i++
			return v, true
		case c == '\\' || c < 0x20:
			return nil, false
		}
	}
	return nil, false
}

// String is Bytes as a string of its own.
func (s *Scanner) String() (string, bool) {
	v, ok := s.Bytes()
	return string(v), ok
}

// Strings reads an array of such strings (an empty array is an empty
// slice, not nil, as encoding/json makes it).
func (s *Scanner) Strings() ([]string, bool) {
	if !s.Next('[') {
		return nil, false
	}
	list := make([]string, 0, 4)
	if s.Next(']') {
		return list, true
	}
	for {
		e, ok := s.String()
		if !ok {
			return nil, false
		}
		list = append(list, e)
		if s.Next(']') {
			return list, true
		}
		if !s.Next(',') {
			return nil, false
		}
	}
}
