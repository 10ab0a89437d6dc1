package apns

import "time"

// guardWindow is how many recent answers decide whether BadDeviceToken is
// common.
const guardWindow = 50

// tokenGuard decides whether a BadDeviceToken (or DeviceTokenNotForTopic)
// answer may delete its registration. It promises to keep the
// registration when such answers are half or more of the last
// guardWindow answers from APNs, or when the credential changed less than
// trustAfter ago: then the configuration is wrong (the APNs environment,
// a certificate for another topic), not the devices, and deleting would
// empty the registry. It also says when to warn about it: at the first
// such answer, then at most once an hour while it lasts.
type tokenGuard struct {
	trustAfter time.Duration
	answers    [guardWindow]bool // whether each of the last answers was a bad token
	next       int               // where the next answer goes in answers
	count, bad int               // answers in the window, and how many were bad
	changedAt  time.Time         // the credential's last change
	warned     time.Time         // the last warning; zero while the guard does not keep
}

func newTokenGuard(trustAfter time.Duration, now time.Time) tokenGuard {
	return tokenGuard{trustAfter: trustAfter, changedAt: now}
}

// note adds an answer from APNs to the window.
func (g *tokenGuard) note(bad bool) {
	if g.count == guardWindow {
		if g.answers[g.next] {
			g.bad--
		}
	} else {
		g.count++
	}
	g.answers[g.next] = bad
	if bad {
		g.bad++
	}
	g.next = (g.next + 1) % guardWindow
}

// keep notes a bad-token answer and says whether its registration must be
// kept, and whether to warn about that now.
func (g *tokenGuard) keep(now time.Time) (keep, warn bool) {
	g.note(true)
	keep = now.Sub(g.changedAt) < g.trustAfter || 2*g.bad > g.count
	switch {
	case !keep:
		g.warned = time.Time{}
	case g.warned.IsZero() || now.Sub(g.warned) >= time.Hour:
		g.warned, warn = now, true
	}
	return keep, warn
}

// window says how many answers the window holds, and how many of them
// were bad tokens, for the warning.
func (g *tokenGuard) window() (answers, bad int) { return g.count, g.bad }

// changed starts over for a new credential: its answers say nothing of
// the old one's, and for trustAfter nothing is deleted.
func (g *tokenGuard) changed(now time.Time) {
	g.answers, g.next, g.count, g.bad = [guardWindow]bool{}, 0, 0, 0
	g.changedAt = now
}
