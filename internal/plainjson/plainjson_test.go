package plainjson

import (
	"slices"
	"testing"
)

func TestScannerReadsOnlyThePlainForm(t *testing.T) {
	s := NewScanner([]byte(` { "a" : ["x", "ü"] , "b":[] } `))
	if !s.Next('{') {
		t.Fatal("no {")
	}
	if k, ok := s.String(); !ok || k != "a" || !s.Next(':') {
		t.Fatalf("key %q %v", k, ok)
	}
	if l, ok := s.Strings(); !ok || !slices.Equal(l, []string{"x", "ü"}) {
		t.Fatalf("list %q %v", l, ok)
	}
	if !s.Next(',') {
		t.Fatal("no ,")
	}
	if k, ok := s.Bytes(); !ok || string(k) != "b" || !s.Next(':') {
		t.Fatalf("key %q %v", k, ok)
	}
	if l, ok := s.Strings(); !ok || l == nil || len(l) != 0 {
		t.Fatalf("empty list %q %v, want an empty non-nil slice", l, ok)
	}
	if !s.Next('}') || !s.End() {
		t.Fatal("not at the end")
	}
	for _, in := range []string{`"a\"b"`, "\"a\tb\"", `"open`, `x`} {
		s := NewScanner([]byte(in))
		if v, ok := s.String(); ok {
			t.Errorf("%q read as %q; escapes, control characters and broken strings are for encoding/json", in, v)
		}
	}
}
