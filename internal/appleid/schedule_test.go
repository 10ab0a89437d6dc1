package appleid

import (
	"crypto/x509"
	"testing"
	"time"
)

const day = 24 * time.Hour

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func TestRenewDelayIsTheTimeUntilThirtyDaysBeforeTheEnd(t *testing.T) {
	for _, tc := range []struct {
		left, want time.Duration
	}{
		{365 * day, 335 * day},
		{31 * day, day},
		{30 * day, 0},
		{29 * day, 0},
		{time.Hour, 0},
		{-day, 0},
	} {
		notAfter := t0.Add(tc.left)
		if got := renewDelay(notAfter, t0); got != tc.want {
			t.Errorf("%v left: delay %v, want %v", tc.left, got, tc.want)
		}
		// The old daemon's sign error scheduled NotAfter − (now − 30 days),
		// i.e. 30 days after expiry; never again.
		if got := renewDelay(notAfter, t0); got > max(tc.left, 0) {
			t.Errorf("%v left: renewal after expiry", tc.left)
		}
	}
}

func TestBackoffDoublesFromAnHourToADayWithBoundedJitter(t *testing.T) {
	want := []time.Duration{0, time.Hour, 2 * time.Hour, 4 * time.Hour, 8 * time.Hour, 16 * time.Hour, 24 * time.Hour, 24 * time.Hour, 24 * time.Hour}
	for n, w := range want {
		if got := backoff(n, 0.5); got != w {
			t.Errorf("backoff(%d) = %v, want %v", n, got, w)
		}
	}
	if got := backoff(1000, 0.5); got != 24*time.Hour {
		t.Errorf("backoff(1000) = %v", got)
	}
	// Jitter stretches by ±10% and never past the cap.
	if lo, hi := backoff(3, 0), backoff(3, 0.999999); lo != 216*time.Minute || hi < 263*time.Minute || hi > 264*time.Minute {
		t.Errorf("jitter range for 4h: %v … %v", lo, hi)
	}
	for _, j := range []float64{-1, 0, 0.3, 0.99, 2} {
		if got := backoff(9, j); got > backoffMax || got < 21*time.Hour {
			t.Errorf("backoff(9, %v) = %v", j, got)
		}
	}
}

func TestDecidePlansTheNextRequestFromTheCertificateAndPastAttempts(t *testing.T) {
	cert := func(left time.Duration) *x509.Certificate { return &x509.Certificate{NotAfter: t0.Add(left)} }
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	tests := []struct {
		name string
		mail *x509.Certificate
		rec  attempts
		can  bool
		kind planKind
		when time.Time
	}{
		{"no vendor", nil, attempts{}, false, planNothing, time.Time{}},
		{"no vendor, good certificate", cert(100 * day), attempts{}, false, planNothing, time.Time{}},
		{"first start", nil, attempts{}, true, planNew, t0},
		{"new sent an hour ago", nil, attempts{New: &attempt{Time: at(-time.Hour)}}, true, planNew, at(23 * time.Hour)},
		{"new sent two days ago", nil, attempts{New: &attempt{Time: at(-2 * day)}}, true, planNew, t0},
		{"new record from the future", nil, attempts{New: &attempt{Time: at(100 * day)}}, true, planNew, at(day)},
		{"expired certificate", cert(-time.Minute), attempts{}, true, planNew, t0},
		{"expired, renewal just failed", cert(-time.Minute), attempts{Renew: &attempt{Time: at(-time.Minute), Failures: 3}}, true, planNew, at(59 * time.Minute)},
		{"good certificate", cert(100 * day), attempts{}, true, planRenew, at(70 * day)},
		{"in the last 30 days", cert(10 * day), attempts{}, true, planRenew, t0},
		{"renewed a moment ago", cert(10 * day), attempts{Renew: &attempt{Time: at(-time.Minute)}}, true, planRenew, at(59 * time.Minute)},
		{"one failure", cert(10 * day), attempts{Renew: &attempt{Time: at(-time.Minute), Failures: 1}}, true, planRenew, at(59 * time.Minute)},
		{"three failures", cert(10 * day), attempts{Renew: &attempt{Time: at(-time.Hour), Failures: 3}}, true, planRenew, at(3 * time.Hour)},
		{"old failures do not delay", cert(100 * day), attempts{Renew: &attempt{Time: at(-300 * day), Failures: 9}}, true, planRenew, at(70 * day)},
		{"failure record from the future", cert(10 * day), attempts{Renew: &attempt{Time: at(50 * day), Failures: 2}}, true, planRenew, at(2 * time.Hour)},
		{"a /new record does not delay renewal", cert(10 * day), attempts{New: &attempt{Time: at(-time.Minute)}}, true, planRenew, t0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := decide(tc.mail, tc.rec, t0, tc.can, 0.5)
			if p.kind != tc.kind || !p.at.Equal(tc.when) {
				t.Errorf("plan %v at %v, want %v at %v", p.kind, p.at, tc.kind, tc.when)
			}
		})
	}
	if s := planNew.String() + planRenew.String() + planNothing.String(); s != "newrenewnothing" {
		t.Errorf("names %q", s)
	}
}

// TestDecideNeverLoops walks time forward through a certificate's life
// with every renewal failing, and checks that requests are never closer
// than an hour and never more than 24 hours apart once renewal is due.
func TestDecideNeverLoops(t *testing.T) {
	mail := &x509.Certificate{NotAfter: t0.Add(40 * day)}
	var rec attempts
	now := t0
	var sent []time.Time
	for range 200 {
		p := decide(mail, rec, now, true, 0.9)
		if p.kind != planRenew {
			break
		}
		if p.at.After(now) {
			now = p.at
			continue
		}
		sent = append(sent, now)
		prev := 0
		if rec.Renew != nil {
			prev = rec.Renew.Failures
		}
		rec.Renew = &attempt{Time: now, Failures: prev + 1}
	}
	if len(sent) < 5 {
		t.Fatalf("only %d renewal attempts", len(sent))
	}
	if !sent[0].Equal(t0.Add(10 * day)) {
		t.Errorf("first renewal at %v, want NotAfter-30d", sent[0])
	}
	for i := 1; i < len(sent); i++ {
		gap := sent[i].Sub(sent[i-1])
		if gap < time.Hour || gap > 24*time.Hour {
			t.Errorf("attempt %d after %v", i, gap)
		}
	}
	// After expiry the plan turns into /new, still not before the floor.
	if last := sent[len(sent)-1]; last.After(mail.NotAfter) {
		t.Errorf("renewal attempted after expiry at %v", last)
	}
	if p := decide(mail, rec, mail.NotAfter, true, 0.9); p.kind != planNew || p.at.Before(rec.Renew.Time.Add(time.Hour)) {
		t.Errorf("after expiry: %v at %v", p.kind, p.at)
	}
}
