// Package logging sets up xapsd's logrus logger, writes its lines (a text
// formatter and a Writer that are cheaper per line than logrus's own) and
// masks the identifiers that must not appear in logs above debug level.
//
// Device tokens and account ids identify a person's phone. At info and
// above they are shortened to a prefix and suffix that still lets an admin
// match log lines to `xapsd devices list` output; at debug and trace they
// are shown whole because debugging needs them.
package logging

import (
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
)

// New returns a logger writing to w in the given format ("text" or "json")
// at the given level.
func New(w io.Writer, level, format string) (*logrus.Logger, error) {
	l := logrus.New()
	l.SetOutput(w)
	if err := Configure(l, level, format); err != nil {
		return nil, err
	}
	return l, nil
}

// Configure changes level and format of an existing logger; SIGHUP uses it
// so that every component keeps its *logrus.Entry.
func Configure(l *logrus.Logger, level, format string) error {
	lvl, err := logrus.ParseLevel(level)
	if err != nil {
		return fmt.Errorf("log level %q: %w", level, err)
	}
	switch strings.ToLower(format) {
	case "", "text":
		l.SetFormatter(newTextFormatter())
	case "json":
		l.SetFormatter(utc{&logrus.JSONFormatter{TimestampFormat: time.RFC3339}})
	default:
		return fmt.Errorf("log format %q: want text or json", format)
	}
	l.SetLevel(lvl)
	return nil
}

// utc writes every time stamp in UTC, as the admin commands show times:
// one zone everywhere, whatever the host's.
type utc struct{ logrus.Formatter }

func (u utc) Format(e *logrus.Entry) ([]byte, error) {
	e.Time = e.Time.UTC()
	return u.Formatter.Format(e)
}

// Mask shortens an identifier to its first and last four characters unless
// the logger is at debug level or below.
func Mask(l logrus.FieldLogger, id string) string {
	if Verbose(l) {
		return id
	}
	return Short(id)
}

// Verbose reports whether l logs at debug level or below, where
// identifiers are shown whole.
func Verbose(l logrus.FieldLogger) bool {
	switch v := l.(type) {
	case *logrus.Entry:
		return v.Logger.IsLevelEnabled(logrus.DebugLevel)
	case *logrus.Logger:
		return v.IsLevelEnabled(logrus.DebugLevel)
	}
	return false
}

// Short always masks: for places (metrics labels, admin output over the
// network) where the log level does not apply.
func Short(id string) string {
	if len(id) <= 10 {
		return strings.Repeat("*", len(id))
	}
	return id[:4] + "…" + id[len(id)-4:]
}

// EveryMinute reports whether a line rate-limited by last (the time of
// its previous line, in Unix nanoseconds; zero at first) may be logged
// now, and if so marks it logged. A problem that concerns every request
// or push is said once a minute, not once each time.
func EveryMinute(last *atomic.Int64) bool {
	now := time.Now().UnixNano()
	prev := last.Load()
	return (prev == 0 || now-prev >= int64(time.Minute)) && last.CompareAndSwap(prev, now)
}

// Discard is a logger that writes nothing, for a part whose caller gave it
// none (tests, tools that only read).
func Discard() *logrus.Logger {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return l
}
