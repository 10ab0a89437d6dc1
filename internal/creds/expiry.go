package creds

import (
	"fmt"
	"sync"
	"time"
)

// expiryDays are the days before expiry at which a warning is due
// (the days a certificate of any kind warns at), largest first.
var expiryDays = [...]int{30, 14, 7, 1}

// ExpiryStage says how close a certificate is to its end: 0 while more
// than 30 days are left, then 30, 14, 7 or 1 (the smallest threshold the
// remaining time is within), and -1 once it has expired.
func ExpiryStage(notAfter, now time.Time) int {
	left := notAfter.Sub(now)
	if left <= 0 {
		return -1
	}
	stage := 0
	for _, d := range expiryDays {
		if left <= time.Duration(d)*24*time.Hour {
			stage = d
		}
	}
	return stage
}

// NextExpiryStage is when ExpiryStage next changes, for a timer; zero
// once the certificate has expired.
func NextExpiryStage(notAfter, now time.Time) time.Time {
	if !now.Before(notAfter) {
		return time.Time{}
	}
	for _, d := range expiryDays {
		if t := notAfter.Add(-time.Duration(d) * 24 * time.Hour); t.After(now) {
			return t
		}
	}
	return notAfter
}

// ExpiredError is the error for an expired certificate, naming its file.
func ExpiredError(file string, notAfter time.Time) error {
	return fmt.Errorf("push certificate %s expired on %s; iOS devices get no pushes until it is replaced (see docs/credentials.md)",
		file, notAfter.UTC().Format(time.RFC3339))
}

// ExpiryWatch remembers which warning was last given for each
// certificate, so the daemon can call Check at start-up and then daily (or
// at NextExpiryStage) and log each warning once. The zero value is ready.
type ExpiryWatch struct {
	mu     sync.Mutex
	warned map[string]int // file and NotAfter → last stage warned about
}

// Check reports whether a warning is due for the certificate in file: at
// the first check within 30 days of expiry (start-up), at each later
// threshold crossed (14, 7, 1 days), and once when it has expired. A new
// certificate in the same file (another NotAfter) starts afresh.
func (w *ExpiryWatch) Check(file string, notAfter, now time.Time) (msg string, due bool) {
	stage := ExpiryStage(notAfter, now)
	key := file + "\x00" + notAfter.UTC().Format(time.RFC3339Nano)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.warned == nil {
		w.warned = map[string]int{}
	}
	if last, ok := w.warned[key]; ok && last == stage {
		return "", false
	}
	w.warned[key] = stage
	switch {
	case stage == 0:
		return "", false
	case stage < 0:
		return ExpiredError(file, notAfter).Error(), true
	}
	days := int(notAfter.Sub(now).Hours() / 24)
	left := fmt.Sprintf("in %d days", days)
	switch days {
	case 0:
		left = "within a day"
	case 1:
		left = "in 1 day"
	}
	return fmt.Sprintf("push certificate %s expires %s (%s); replace or renew it before pushes stop (see docs/credentials.md)",
		file, left, notAfter.UTC().Format(time.RFC3339)), true
}
