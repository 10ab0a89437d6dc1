package appleid

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestEncodePlist(t *testing.T) {
	got, err := encodePlist(map[string]any{
		"b":     []any{"x<&>y", int64(-3), 7, true, false},
		"a":     []byte("hello"),
		"empty": map[string]any{},
		"none":  []any{},
		"d":     map[string]any{"k": "v"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := plistHeader + `<dict>
	<key>a</key>
	<data>
	aGVsbG8=
	</data>
	<key>b</key>
	<array>
		<string>x&lt;&amp;&gt;y</string>
		<integer>-3</integer>
		<integer>7</integer>
		<true/>
		<false/>
	</array>
	<key>d</key>
	<dict>
		<key>k</key>
		<string>v</string>
	</dict>
	<key>empty</key>
	<dict/>
	<key>none</key>
	<array/>
</dict>
</plist>
`
	if string(got) != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	// Long data wraps at 76 characters.
	long, _ := encodePlist(bytes.Repeat([]byte{0xff}, 100))
	_, data, _ := strings.Cut(string(long), "<data>\n")
	data, _, _ = strings.Cut(data, "</data>")
	if lines := strings.Split(strings.TrimSpace(data), "\n"); len(lines) != 2 || len(lines[0]) != 76 {
		t.Errorf("data lines %q", lines)
	}

	for _, bad := range []any{
		map[string]any{"x": 1.5},
		map[string]any{"x": "a\x01b"},
		[]any{"\xff"},
		map[string]any{"\x02": "v"},
	} {
		if _, err := encodePlist(bad); err == nil {
			t.Errorf("%#v encoded without error", bad)
		}
	}
}

func TestDecodePlist(t *testing.T) {
	// As Apple's servers and tools write it, with the oddities a reader
	// meets: comments, CDATA, entities, spaces in data and integers, keys
	// out of order, <date>, <real>, <key/>.
	in := `<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- a comment -->
<plist version="1.0">
  <dict>
    <key>z</key> <integer> 42 </integer>
    <key>a</key><string><![CDATA[<cdata>]]> &amp; more</string>
    <key>data</key>
    <data>
      aGVs
      bG8=
    </data>
    <key>when</key><date>2024-10-29T00:00:00Z</date>
    <key>r</key><real>1.5</real>
    <key/><true/>
    <key>list</key><array><false/><dict/><array/><string/></array>
  </dict>
</plist>`
	v, err := decodePlist([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"z": int64(42), "a": "<cdata> & more", "data": []byte("hello"), "when": "2024-10-29T00:00:00Z",
		"r": 1.5, "": true, "list": []any{false, map[string]any{}, []any{}, ""},
	}
	if !reflect.DeepEqual(v, want) {
		t.Errorf("got %#v\nwant %#v", v, want)
	}

	// Without the <plist> wrapper, a bare value is accepted.
	if v, err := decodePlist([]byte("<string>x</string>")); err != nil || v != "x" {
		t.Errorf("bare value: %#v, %v", v, err)
	}
}

func TestDecodePlistErrors(t *testing.T) {
	for _, in := range []string{
		"",
		"just text",
		"<plist></plist>",
		"<plist><dict><key>a</key></dict></plist>",
		"<plist><dict><string>a</string></dict></plist>",
		"<plist><dict><key>a</key><string>x</string>",
		"<plist><integer>12x</integer></plist>",
		"<plist><integer>99999999999999999999</integer></plist>",
		"<plist><real>x</real></plist>",
		"<plist><data>!!!</data></plist>",
		"<plist><blob/></plist>",
		"<plist><string><b>x</b></string></plist>",
		"<plist><array>text</array></plist>",
		"<plist><string>&unknown;</string></plist>",
		"<plist><dict>text<key>a</key><true/></dict></plist>",
		strings.Repeat("<array>", maxPlistDepth+1) + strings.Repeat("</array>", maxPlistDepth+1),
	} {
		if v, err := decodePlist([]byte(in)); err == nil {
			t.Errorf("%q: decoded as %#v", in, v)
		} else if !errors.Is(err, errPlistSyntax) {
			t.Errorf("%q: error %v is not errPlistSyntax", in, err)
		}
	}
	// Nesting up to the limit is fine.
	deep := strings.Repeat("<array>", maxPlistDepth) + strings.Repeat("</array>", maxPlistDepth)
	if _, err := decodePlist([]byte(deep)); err != nil {
		t.Errorf("depth %d: %v", maxPlistDepth, err)
	}
}

func TestPlistRoundTrip(t *testing.T) {
	v := map[string]any{
		"s": "text with ünïcode, <tags>, & \"quotes\"\n\ttabs, CR LF\r\n, ]]>",
		"n": int64(-80010),
		"b": []byte{0, 1, 2, 0xfe, 0xff},
		"t": true,
		"a": []any{map[string]any{"CSR": "-----BEGIN CERTIFICATE REQUEST-----\nabc\n-----END CERTIFICATE REQUEST-----\n"}},
	}
	enc, err := encodePlist(v)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodePlist(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, v) {
		t.Errorf("round trip: got %#v", got)
	}
}
