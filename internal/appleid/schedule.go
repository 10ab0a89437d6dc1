package appleid

import (
	"crypto/x509"
	"time"
)

// Timing rules.
const (
	// renewBefore is how long before the mail certificate's end renewal
	// starts, as in the old daemon (docs/protocol.md#apple-cert-renewal).
	renewBefore = 30 * 24 * time.Hour
	// newInterval is the least time between two /new requests, across
	// restarts: each one that Apple answers mails the account holder and
	// creates certificates nobody can revoke from here (issue #31 of the
	// old daemon: 99 mails).
	newInterval = 24 * time.Hour
	// minGap is the least time between any two requests, whatever the
	// certificates say, so no arithmetic slip can make a loop.
	minGap = time.Hour
	// Renewal retries start at backoffBase and double up to backoffMax.
	backoffBase = time.Hour
	backoffMax  = 24 * time.Hour
	// recheck bounds every sleep: plans are made again at least this
	// often, so a suspended machine or a changed clock does not leave a
	// stale timer in charge.
	recheck = 6 * time.Hour
)

// renewAt is when renewal of a certificate ending at notAfter is due.
// The old daemon computed NotAfter − (now − 30 days), a sign error that
// put the renewal 30 days after expiry and then renewed in a loop;
// this is NotAfter − 30 days, full stop.
func renewAt(notAfter time.Time) time.Time { return notAfter.Add(-renewBefore) }

// renewDelay is how long to wait from now until renewal is due; never
// negative, so a certificate already in its last 30 days renews at once.
func renewDelay(notAfter, now time.Time) time.Duration {
	return max(renewAt(notAfter).Sub(now), 0)
}

// backoff is the wait after the n-th failed renewal in a row (n ≥ 1):
// 1h, 2h, 4h … up to 24h, stretched by jitter in [0,1) by up to ±10% so
// that many servers restarted together do not ask together; never more
// than backoffMax.
func backoff(n int, jitter float64) time.Duration {
	if n < 1 {
		return 0
	}
	d := backoffMax
	if n <= 5 { // 1h << 5 = 32h is past the cap already
		d = min(backoffBase<<(n-1), backoffMax)
	}
	jitter = min(max(jitter, 0), 1)
	d = time.Duration(float64(d) * (0.9 + 0.2*jitter))
	return min(d, backoffMax)
}

// What the manager does next.
type planKind int

const (
	planNothing planKind = iota // no request possible (no vendor identity)
	planNew
	planRenew
)

func (k planKind) String() string {
	switch k {
	case planNew:
		return "new"
	case planRenew:
		return "renew"
	}
	return "nothing"
}

type plan struct {
	kind planKind
	at   time.Time
}

// decide picks the next request and its time from the stored mail
// certificate (nil when none) and the attempt record. It is a pure
// function so the rules can be tested at any instant.
func decide(mail *x509.Certificate, rec attempts, now time.Time, canRequest bool, jitter float64) plan {
	if !canRequest {
		return plan{kind: planNothing}
	}
	if mail != nil && now.Before(mail.NotAfter) {
		at := later(renewAt(mail.NotAfter), now)
		if r := rec.Renew; r != nil {
			// A record in the future means the clock went back; count
			// from now rather than wait for the clock to catch up.
			last := earlier(r.Time, now)
			at = later(at, last.Add(minGap))
			if r.Failures > 0 {
				at = later(at, last.Add(backoff(r.Failures, jitter)))
			}
		}
		return plan{kind: planRenew, at: at}
	}
	at := now
	if r := rec.New; r != nil {
		at = later(at, earlier(r.Time, now).Add(newInterval))
	}
	if r := rec.Renew; r != nil {
		at = later(at, earlier(r.Time, now).Add(minGap))
	}
	return plan{kind: planNew, at: at}
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
