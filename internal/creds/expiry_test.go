package creds

import (
	"strings"
	"testing"
	"time"
)

// The days before a certificate ends at which xapsd warns, for every kind
// of credential (a certificate file, the Apple ID certificate).

const day = 24 * time.Hour

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func TestExpiryStageIsTheDaysThresholdReached(t *testing.T) {
	for _, tc := range []struct {
		left time.Duration
		want int
	}{
		{400 * day, 0}, {30*day + time.Second, 0}, {30 * day, 30}, {15 * day, 30}, {14 * day, 14}, {8 * day, 14},
		{7 * day, 7}, {2 * day, 7}, {day, 1}, {time.Second, 1}, {0, -1}, {-day, -1},
	} {
		if got := ExpiryStage(t0.Add(tc.left), t0); got != tc.want {
			t.Errorf("%v left: stage %d, want %d", tc.left, got, tc.want)
		}
	}
}

func TestNextExpiryStage(t *testing.T) {
	notAfter := t0.Add(100 * day)
	for _, tc := range []struct {
		now, want time.Time
	}{
		{t0, notAfter.Add(-30 * day)},
		{notAfter.Add(-30 * day), notAfter.Add(-14 * day)},
		{notAfter.Add(-10 * day), notAfter.Add(-7 * day)},
		{notAfter.Add(-3 * day), notAfter.Add(-day)},
		{notAfter.Add(-time.Hour), notAfter},
		{notAfter, time.Time{}},
	} {
		got := NextExpiryStage(notAfter, tc.now)
		if !got.Equal(tc.want) {
			t.Errorf("at %v: next %v, want %v", tc.now, got, tc.want)
		}
		if !got.IsZero() && ExpiryStage(notAfter, got) == ExpiryStage(notAfter, tc.now) {
			t.Errorf("at %v: the stage does not change at %v", tc.now, got)
		}
	}
}

func TestExpiryWatchWarnsOncePerStage(t *testing.T) {
	const file = "/etc/xapsd/push.pem"
	notAfter := t0.Add(40 * day)
	var w ExpiryWatch
	steps := []struct {
		at   time.Duration // after t0
		want string        // "" = no warning
	}{
		{0, ""},
		{5 * day, ""},
		{10*day + time.Hour, "expires in 29 days"},
		{12 * day, ""},
		{26 * day, "expires in 14 days"},
		{27 * day, ""},
		{33 * day, "expires in 7 days"},
		{39 * day, "expires in 1 day"},
		{40*day - time.Hour, ""},
		{40 * day, "expired on 2026-04-10T12:00:00Z"},
		{41 * day, ""},
	}
	for _, s := range steps {
		msg, due := w.Check(file, notAfter, t0.Add(s.at))
		if due != (s.want != "") || !strings.Contains(msg, s.want) {
			t.Errorf("after %v: %q, %v; want %q", s.at, msg, due, s.want)
		}
		if due && !strings.Contains(msg, file) {
			t.Errorf("after %v: message does not name the file: %s", s.at, msg)
		}
	}

	// Start-up inside the window warns at once; a new certificate in the
	// same file starts afresh; another file is separate.
	var w2 ExpiryWatch
	if msg, due := w2.Check(file, t0.Add(3*day), t0); !due || !strings.Contains(msg, "in 3 days") {
		t.Errorf("start-up: %q, %v", msg, due)
	}
	if _, due := w2.Check(file, t0.Add(3*day), t0.Add(time.Hour)); due {
		t.Error("warned twice at the same stage")
	}
	if msg, due := w2.Check(file, t0.Add(12*time.Hour), t0); !due || !strings.Contains(msg, "within a day") {
		t.Errorf("replaced certificate: %q, %v", msg, due)
	}
	if _, due := w2.Check("/other.pem", t0.Add(3*day), t0); !due {
		t.Error("another file shares the warning state")
	}
	if _, due := w2.Check("/fresh.pem", t0.Add(300*day), t0); due {
		t.Error("warned for a certificate far from its end")
	}

	err := ExpiredError(file, notAfter)
	if !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), "expired on 2026-04-10") {
		t.Errorf("ExpiredError = %v", err)
	}
}
