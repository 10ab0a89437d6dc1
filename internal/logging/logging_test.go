package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const token = "2918390218931890821908309283098109381029309829018310983092892829"

func TestMaskDependsOnLevel(t *testing.T) {
	var buf bytes.Buffer
	l, err := New(&buf, "info", "text")
	if err != nil {
		t.Fatal(err)
	}
	e := l.WithField("component", "test")
	if got := Mask(e, token); got != "2918…2829" {
		t.Errorf("info: Mask = %q", got)
	}
	if err := Configure(l, "debug", "text"); err != nil {
		t.Fatal(err)
	}
	if got := Mask(e, token); got != token {
		t.Errorf("debug: Mask = %q, want whole token", got)
	}
	if got := Short("short"); got != "*****" {
		t.Errorf("Short(short) = %q", got)
	}
}

func TestJSONFormatAndBadInput(t *testing.T) {
	var buf bytes.Buffer
	l, err := New(&buf, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	l.WithField("k", "v").Info("hello")
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil || m["msg"] != "hello" || m["k"] != "v" {
		t.Errorf("json line %q: %v", buf.String(), err)
	}
	if _, err := New(&buf, "loud", "text"); err == nil || !strings.Contains(err.Error(), "loud") {
		t.Errorf("bad level error = %v", err)
	}
	if _, err := New(&buf, "info", "xml"); err == nil || !strings.Contains(err.Error(), "xml") {
		t.Errorf("bad format error = %v", err)
	}
}

// Time stamps are RFC 3339 in UTC in both formats, whatever the host's
// zone, as the admin commands show times.
func TestTimesAreUTC(t *testing.T) {
	zone := time.FixedZone("XST", 5*3600)
	for _, format := range []string{"text", "json"} {
		var buf bytes.Buffer
		l, err := New(&buf, "info", format)
		if err != nil {
			t.Fatal(err)
		}
		l.WithTime(time.Date(2026, 3, 1, 2, 3, 4, 5, zone)).Info("hello")
		if out := buf.String(); !strings.Contains(out, "2026-02-28T21:03:04Z") {
			t.Errorf("%s: %q lacks the UTC time", format, out)
		}
	}
}

func TestEveryMinuteLetsOneLineAMinuteThrough(t *testing.T) {
	var last atomic.Int64
	if !EveryMinute(&last) {
		t.Error("the first line is not logged")
	}
	if EveryMinute(&last) {
		t.Error("a second line within the minute is logged")
	}
	last.Store(time.Now().Add(-61 * time.Second).UnixNano())
	if !EveryMinute(&last) {
		t.Error("a line a minute later is not logged")
	}
}
