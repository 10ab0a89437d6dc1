package appleid

import (
	"bytes"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// This file holds the small part of Apple's XML property list format that
// the certificate service speaks. Values are plain Go
// values: map[string]any (dict), []any (array), string, int64 (integer;
// int is accepted when encoding), float64 (real, decode only), bool,
// []byte (data). A <date> decodes as its text.

const plistHeader = `<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
`

// encodePlist writes v as an XML plist in the layout Apple's tools write:
// tab indentation and dict keys sorted, so the same request always has the
// same bytes (the signature covers the inner plist byte for byte).
func encodePlist(v any) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(plistHeader)
	if err := encodeValue(&b, v, 0); err != nil {
		return nil, err
	}
	b.WriteString("</plist>\n")
	return b.Bytes(), nil
}

func encodeValue(b *bytes.Buffer, v any, depth int) error {
	indent := strings.Repeat("\t", depth)
	switch x := v.(type) {
	case map[string]any:
		if len(x) == 0 {
			b.WriteString(indent + "<dict/>\n")
			return nil
		}
		b.WriteString(indent + "<dict>\n")
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if err := writeText(b, indent+"\t<key>", k, "</key>\n"); err != nil {
				return fmt.Errorf("key %q: %w", k, err)
			}
			if err := encodeValue(b, x[k], depth+1); err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
		}
		b.WriteString(indent + "</dict>\n")
	case []any:
		if len(x) == 0 {
			b.WriteString(indent + "<array/>\n")
			return nil
		}
		b.WriteString(indent + "<array>\n")
		for i, e := range x {
			if err := encodeValue(b, e, depth+1); err != nil {
				return fmt.Errorf("[%d]: %w", i, err)
			}
		}
		b.WriteString(indent + "</array>\n")
	case string:
		return writeText(b, indent+"<string>", x, "</string>\n")
	case int:
		fmt.Fprintf(b, "%s<integer>%d</integer>\n", indent, x)
	case int64:
		fmt.Fprintf(b, "%s<integer>%d</integer>\n", indent, x)
	case bool:
		if x {
			b.WriteString(indent + "<true/>\n")
		} else {
			b.WriteString(indent + "<false/>\n")
		}
	case []byte:
		// Lines of 76 characters as Apple writes them; decoders drop the
		// white space.
		b.WriteString(indent + "<data>\n")
		enc := base64.StdEncoding.EncodeToString(x)
		for len(enc) > 0 {
			n := min(len(enc), 76)
			b.WriteString(indent + enc[:n] + "\n")
			enc = enc[n:]
		}
		b.WriteString(indent + "</data>\n")
	default:
		return fmt.Errorf("plist: cannot encode %T", v)
	}
	return nil
}

// writeText escapes s for XML character data. XML 1.0 cannot carry most
// control characters at all, so they are refused rather than mangled.
func writeText(b *bytes.Buffer, open, s, close string) error {
	if !utf8.ValidString(s) {
		return errors.New("plist: string is not valid UTF-8")
	}
	for _, r := range s {
		if r < 0x20 && r != '\t' && r != '\n' && r != '\r' {
			return fmt.Errorf("plist: control character %U cannot be written in XML", r)
		}
	}
	b.WriteString(open)
	// Newlines stay literal, as in Apple's plists (the CSRs are PEM
	// text); a CR is escaped because XML readers turn a literal CR LF
	// into LF.
	b.WriteString(textEscaper.Replace(s))
	b.WriteString(close)
	return nil
}

var textEscaper = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", "\r", "&#13;")

// maxPlistDepth bounds nesting; Apple's answers are four levels deep, and
// the bound keeps hostile input from exhausting the stack.
const maxPlistDepth = 32

var errPlistSyntax = errors.New("plist: malformed")

// decodePlist parses an XML plist into plain Go values. It is lenient about
// what does not change the meaning (white space, comments, a missing
// <plist> wrapper, key order) and strict about the rest.
func decodePlist(data []byte) (any, error) {
	d := xml.NewDecoder(bytes.NewReader(data))
	d.Strict = true
	for {
		tok, err := d.Token()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("%w: no value", errPlistSyntax)
			}
			return nil, fmt.Errorf("%w: %v", errPlistSyntax, err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if t.Name.Local == "plist" {
				v, err := decodeNext(d, 0, "plist")
				if err != nil {
					return nil, err
				}
				if v == nil {
					return nil, fmt.Errorf("%w: empty <plist>", errPlistSyntax)
				}
				return v, nil
			}
			return decodeElement(d, t, 0)
		case xml.CharData:
			if len(bytes.TrimSpace(t)) > 0 {
				return nil, fmt.Errorf("%w: text outside any element", errPlistSyntax)
			}
		}
	}
}

// decodeNext returns the next value inside the open element parent, or nil
// when parent closes first. A second value in a <plist> is ignored: only
// the first one has meaning.
func decodeNext(d *xml.Decoder, depth int, parent string) (any, error) {
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, fmt.Errorf("%w: inside <%s>: %v", errPlistSyntax, parent, err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			return decodeElement(d, t, depth)
		case xml.EndElement:
			return nil, nil
		case xml.CharData:
			if len(bytes.TrimSpace(t)) > 0 {
				return nil, fmt.Errorf("%w: stray text in <%s>", errPlistSyntax, parent)
			}
		}
	}
}

func decodeElement(d *xml.Decoder, start xml.StartElement, depth int) (any, error) {
	if depth >= maxPlistDepth {
		return nil, fmt.Errorf("%w: nested deeper than %d", errPlistSyntax, maxPlistDepth)
	}
	switch name := start.Name.Local; name {
	case "dict":
		m := map[string]any{}
		for {
			tok, err := nextElement(d, "dict")
			if err != nil {
				return nil, err
			}
			if tok == nil {
				return m, nil
			}
			if tok.Name.Local != "key" {
				return nil, fmt.Errorf("%w: <%s> where a <key> belongs in <dict>", errPlistSyntax, tok.Name.Local)
			}
			k, err := text(d, "key")
			if err != nil {
				return nil, err
			}
			v, err := decodeNext(d, depth+1, "dict")
			if err != nil {
				return nil, err
			}
			if v == nil {
				return nil, fmt.Errorf("%w: key %q has no value", errPlistSyntax, k)
			}
			m[k] = v
		}
	case "array":
		a := []any{}
		for {
			v, err := decodeNext(d, depth+1, "array")
			if err != nil {
				return nil, err
			}
			if v == nil {
				return a, nil
			}
			a = append(a, v)
		}
	case "string", "date":
		return text(d, name)
	case "integer":
		s, err := text(d, name)
		if err != nil {
			return nil, err
		}
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: <integer>%s</integer>", errPlistSyntax, clip(s))
		}
		return n, nil
	case "real":
		s, err := text(d, name)
		if err != nil {
			return nil, err
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil {
			return nil, fmt.Errorf("%w: <real>%s</real>", errPlistSyntax, clip(s))
		}
		return f, nil
	case "true", "false":
		if err := d.Skip(); err != nil {
			return nil, fmt.Errorf("%w: <%s>: %v", errPlistSyntax, name, err)
		}
		return name == "true", nil
	case "data":
		s, err := text(d, name)
		if err != nil {
			return nil, err
		}
		clean := strings.Map(func(r rune) rune {
			if r == ' ' || r == '\t' || r == '\n' || r == '\r' {
				return -1
			}
			return r
		}, s)
		b, err := base64.StdEncoding.DecodeString(clean)
		if err != nil {
			return nil, fmt.Errorf("%w: <data> is not base64: %v", errPlistSyntax, err)
		}
		return b, nil
	default:
		return nil, fmt.Errorf("%w: unknown element <%s>", errPlistSyntax, clip(name))
	}
}

// nextElement returns the next child element of parent, or nil at its end.
func nextElement(d *xml.Decoder, parent string) (*xml.StartElement, error) {
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, fmt.Errorf("%w: inside <%s>: %v", errPlistSyntax, parent, err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			return &t, nil
		case xml.EndElement:
			return nil, nil
		case xml.CharData:
			if len(bytes.TrimSpace(t)) > 0 {
				return nil, fmt.Errorf("%w: stray text in <%s>", errPlistSyntax, parent)
			}
		}
	}
}

// text reads the character data of a leaf element up to its end tag.
func text(d *xml.Decoder, name string) (string, error) {
	var b strings.Builder
	for {
		tok, err := d.Token()
		if err != nil {
			return "", fmt.Errorf("%w: inside <%s>: %v", errPlistSyntax, name, err)
		}
		switch t := tok.(type) {
		case xml.CharData:
			b.Write(t)
		case xml.EndElement:
			return b.String(), nil
		case xml.StartElement:
			return "", fmt.Errorf("%w: <%s> inside <%s>", errPlistSyntax, clip(t.Name.Local), name)
		}
	}
}

// clip keeps error messages short when the input is junk.
func clip(s string) string {
	if len(s) > 40 {
		return strconv.Quote(s[:40]) + "…"
	}
	return strconv.Quote(s)
}
