package logging

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// logrusText is the formatter textFormatter stands in for.
var logrusText = utc{&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: time.RFC3339}}

// sameAsLogrus formats e with both and fails unless the lines are equal.
func sameAsLogrus(t *testing.T, e *logrus.Entry) {
	t.Helper()
	want, err := logrusText.Format(dupEntry(e))
	if err != nil {
		t.Fatal(err)
	}
	want = bytes.Clone(want)
	got, err := newTextFormatter().Format(dupEntry(e))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("textFormatter wrote\n%s\nlogrus writes\n%s", got, want)
	}
}

// dupEntry is e with its own data and buffer, as logrus hands each
// formatter an entry.
func dupEntry(e *logrus.Entry) *logrus.Entry {
	d := *e
	d.Data = logrus.Fields{}
	for k, v := range e.Data {
		d.Data[k] = v
	}
	d.Buffer = &bytes.Buffer{}
	return &d
}

func TestTextFormatterWritesWhatLogrusWrites(t *testing.T) {
	l := logrus.New()
	l.SetOutput(io.Discard) // not a terminal: the plain lines
	at := time.Date(2026, 12, 7, 1, 2, 3, 456, time.FixedZone("CET", 3600))
	entry := func(level logrus.Level, msg string, f logrus.Fields) *logrus.Entry {
		return &logrus.Entry{Logger: l, Time: at, Level: level, Message: msg, Data: f}
	}
	for _, e := range []*logrus.Entry{
		entry(logrus.InfoLevel, "push", logrus.Fields{"token": Short(token), "user": "alice@example.org", "outcome": "delivered", "status": 200, "attempt": 1, "ms": int64(41)}),
		entry(logrus.WarnLevel, "push failed", logrus.Fields{"token": Short(token), "user": "bob", "outcome": "failed", "status": 400, "attempt": 1, "ms": int64(0), "reason": "BadDeviceToken"}),
		entry(logrus.InfoLevel, "test push", logrus.Fields{"test": true, "user": "u ser", "reason": `quote " and \ back`}),
		entry(logrus.DebugLevel, "", logrus.Fields{"empty": "", "tab": "a\tb", "unicode": "ü…", "bad": "\xff", "safe": "a-b.c_d/e@f^g+h"}),
		entry(logrus.ErrorLevel, "a message with spaces=and equals", nil),
		entry(logrus.InfoLevel, "no-quotes-needed", logrus.Fields{"n": -5, "big": int64(-1 << 62), "f": false}),
		// Lines logrus writes itself: other types, clashing keys.
		entry(logrus.InfoLevel, "other types", logrus.Fields{"error": errors.New("boom: x"), "d": time.Second, "u": uint(3), "f": 1.5, "events": []string{"a", "b"}}),
		entry(logrus.InfoLevel, "clash", logrus.Fields{"time": "t", "msg": "m", "level": "l", "logrus_error": "e", "user": "u"}),
		entry(logrus.InfoLevel, "named string", logrus.Fields{"outcome": Outcomeish("delivered")}),
	} {
		sameAsLogrus(t, e)
	}
}

// Outcomeish is a string type of its own, as apns.Outcome.
type Outcomeish string

func FuzzTextFormatter(f *testing.F) {
	f.Add("push", "alice", "2918…2829", 200, int64(40), true)
	f.Add("", "a b", `"\`, -1, int64(0), false)
	l := logrus.New()
	l.SetOutput(io.Discard)
	f.Fuzz(func(t *testing.T, msg, user, token string, status int, ms int64, test bool) {
		sameAsLogrus(t, &logrus.Entry{Logger: l, Time: time.Unix(ms, 0), Level: logrus.Level(uint32(status) % 7), Message: msg,
			Data: logrus.Fields{"user": user, "token": token, "status": status, "ms": ms, "test": test}})
	})
}

// BenchmarkPushLine formats a push's line with logrus's formatter and
// with textFormatter.
func BenchmarkPushLine(b *testing.B) {
	l := logrus.New()
	l.SetOutput(io.Discard)
	e := &logrus.Entry{Logger: l, Time: time.Now(), Level: logrus.InfoLevel, Message: "push", Data: logrus.Fields{
		"token": Short(token), "user": "alice@example.org", "outcome": "delivered", "status": 200, "attempt": 1, "ms": int64(41)}}
	for _, f := range []struct {
		name string
		f    logrus.Formatter
	}{{"logrus", logrusText}, {"textFormatter", newTextFormatter()}} {
		b.Run(f.name, func(b *testing.B) {
			b.ReportAllocs()
			e.Buffer = &bytes.Buffer{}
			for b.Loop() {
				e.Buffer.Reset()
				if _, err := f.f.Format(e); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
