package cli

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// What the admin commands print comes from the network (user names,
// mailbox names, Apple's reasons), so it is escaped: a name with U+009B
// (a terminal's "control sequence introducer"), U+0085 (a newline to some
// terminals), U+2028 or U+202E (which shows the rest of the line
// reversed) must not move the cursor, start an escape sequence or
// disguise what the admin reads.

// hidden reports whether r does not show as itself: a control or format
// character, a line or paragraph separator, or what invalid UTF-8 decodes
// to.
func hidden(r rune) bool {
	return r == utf8.RuneError || unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp)
}

// shown is s as the commands print it in text: as it is when every
// character shows as itself, else quoted with Go's escapes ("\u202e",
// "\x9b"), which also makes the quoting visible.
func shown(s string) string {
	for _, r := range s {
		if hidden(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// jsonEscaper writes JSON with every hidden character outside ASCII as a
// \u escape (encoding/json escapes only the ASCII ones and U+2028/U+2029).
// Such characters can only stand inside JSON strings, where the escape
// means the same, so the output decodes to the same values. A character
// split across two writes is held back until it is whole.
type jsonEscaper struct {
	w    io.Writer
	tail []byte // the start of a UTF-8 sequence the last write ended in
	buf  bytes.Buffer
}

func (e *jsonEscaper) Write(p []byte) (int, error) {
	in := append(e.tail, p...)
	e.tail = nil
	e.buf.Reset()
	for len(in) > 0 {
		r, size := utf8.DecodeRune(in)
		if r == utf8.RuneError && size == 1 && !utf8.FullRune(in) {
			e.tail = append([]byte(nil), in...)
			break
		}
		if r >= utf8.RuneSelf && hidden(r) {
			writeUEscape(&e.buf, r)
		} else {
			e.buf.Write(in[:size])
		}
		in = in[size:]
	}
	if _, err := e.w.Write(e.buf.Bytes()); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close writes what a last, incomplete sequence held back, escaped.
func (e *jsonEscaper) Close() error {
	if len(e.tail) == 0 {
		return nil
	}
	e.buf.Reset()
	for range e.tail {
		writeUEscape(&e.buf, utf8.RuneError)
	}
	e.tail = nil
	_, err := e.w.Write(e.buf.Bytes())
	return err
}

func writeUEscape(b *bytes.Buffer, r rune) {
	if r1, r2 := utf16.EncodeRune(r); r1 != unicode.ReplacementChar {
		fmt.Fprintf(b, `\u%04x\u%04x`, r1, r2)
		return
	}
	fmt.Fprintf(b, `\u%04x`, r)
}
