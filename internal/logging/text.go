package logging

import (
	"bytes"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/term"
)

// textFormatter writes exactly the lines of logrus's TextFormatter with
// full RFC 3339 time stamps (in UTC, as utc makes them), for less CPU: a
// push's line (strings and integers) is written without copying the
// fields, without fmt and in one flat pass. Any other line (a value of
// another type, a field named like a fixed key, a line with the caller),
// and every line on a terminal, where logrus colours them, is logrus's
// own; TestTextFormatterWritesWhatLogrusWrites holds the two together.
type textFormatter struct {
	logrus logrus.Formatter // utc{&logrus.TextFormatter{...}}

	once     sync.Once
	terminal bool
}

func newTextFormatter() *textFormatter {
	return &textFormatter{logrus: utc{&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: time.RFC3339}}}
}

func (f *textFormatter) Format(e *logrus.Entry) ([]byte, error) {
	if !f.plain(e) {
		return f.logrus.Format(e)
	}
	var small [12]string
	keys := small[:0]
	for k, v := range e.Data {
		switch v.(type) {
		case string, int, int64, bool:
		default:
			return f.logrus.Format(e)
		}
		switch k {
		case logrus.FieldKeyTime, logrus.FieldKeyMsg, logrus.FieldKeyLevel, logrus.FieldKeyLogrusError:
			return f.logrus.Format(e) // logrus renames it fields.<key>
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b := e.Buffer
	if b == nil {
		b = new(bytes.Buffer)
	}
	var tmp [64]byte
	if b.Len() > 0 {
		b.WriteByte(' ')
	}
	// An RFC 3339 time has colons, so logrus quotes it; nothing in it
	// needs escaping.
	b.WriteString(`time="`)
	b.Write(e.Time.UTC().AppendFormat(tmp[:0], time.RFC3339))
	b.WriteString(`" level=`)
	b.WriteString(e.Level.String())
	if e.Message != "" {
		b.WriteString(" msg=")
		appendText(b, e.Message)
	}
	for _, k := range keys {
		b.WriteByte(' ')
		b.WriteString(k)
		b.WriteByte('=')
		switch v := e.Data[k].(type) {
		case string:
			appendText(b, v)
		case int:
			b.Write(strconv.AppendInt(tmp[:0], int64(v), 10))
		case int64:
			b.Write(strconv.AppendInt(tmp[:0], v, 10))
		case bool:
			b.Write(strconv.AppendBool(tmp[:0], v))
		}
	}
	b.WriteByte('\n')
	return b.Bytes(), nil
}

// plain: logrus would write e without colours and without its caller.
func (f *textFormatter) plain(e *logrus.Entry) bool {
	if e.Caller != nil || e.Logger == nil {
		return false
	}
	f.once.Do(func() {
		if o, ok := e.Logger.Out.(*os.File); ok {
			f.terminal = term.IsTerminal(int(o.Fd()))
		}
	})
	return !f.terminal
}

// appendText writes s as logrus does: as it is when every byte is one it
// leaves unquoted, else Go-quoted.
func appendText(b *bytes.Buffer, s string) {
	for i := 0; i < len(s); i++ {
		if !safeByte(s[i]) {
			var tmp [128]byte
			b.Write(strconv.AppendQuote(tmp[:0], s))
			return
		}
	}
	b.WriteString(s)
}

func safeByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '-', '.', '_', '/', '@', '^', '+':
		return true
	}
	return false
}
