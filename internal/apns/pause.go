package apns

import (
	"fmt"
	"time"
)

// credentialPause holds the queue while APNs refuses the credential. It
// promises that nothing is sent meanwhile but one probe at a time, none
// before probeAt; that an answer about a device (anything but another
// refusal, or no answer) ends it; and that a new credential ends it. The
// pushes wait without spending their attempts; the sender sees to that.
type credentialPause struct {
	on      bool
	reason  string    // for /readyz and the log
	since   time.Time // when it began, for /readyz
	probeAt time.Time // when one push may go out to try again
	probing bool      // that push is on its way
}

// start pauses, or goes on pausing, for why; the next probe goes no
// sooner than probeAt.
func (p *credentialPause) start(why string, probeAt, now time.Time) {
	if !p.on {
		p.since = now
	}
	p.on, p.reason = true, why
	if probeAt.After(p.probeAt) {
		p.probeAt = probeAt
	}
}

// active says whether sending is paused.
func (p *credentialPause) active() bool { return p.on }

// holds says whether the queue cannot move for the pause: paused, and
// no probe on its way.
func (p *credentialPause) holds() bool { return p.on && !p.probing }

// admit says whether the next push may go: always when not paused; when
// paused, only as the probe, once probeAt has come and no other probe is
// on its way. Otherwise wait is how long until one may (0: until the
// probe's answer).
func (p *credentialPause) admit(now time.Time) (ok, probe bool, wait time.Duration) {
	switch {
	case !p.on:
		return true, false, 0
	case p.probing:
		return false, false, 0
	}
	if wait := p.probeAt.Sub(now); wait > 0 {
		return false, false, wait
	}
	p.probing = true
	return true, true, 0
}

// answered ends the pause when APNs answered about a device (not
// another refusal of the credential), and says whether it did. A probe
// still on its way is still awaited (probed).
func (p *credentialPause) answered(aboutDevice bool) bool {
	if !p.on || !aboutDevice {
		return false
	}
	p.on, p.reason, p.probeAt = false, "", time.Time{}
	return true
}

// returned notes that the probe is back.
func (p *credentialPause) returned() { p.probing = false }

// later puts the next probe no sooner than interval from now, unless a
// refusal already set a later time: a probe came back without an answer
// that ends the pause.
func (p *credentialPause) later(now time.Time, interval time.Duration) {
	if !p.probeAt.After(now) {
		p.probeAt = now.Add(interval)
	}
}

// err says why sending is paused, for Paused; nil when it is not.
func (p *credentialPause) err() error {
	if !p.on {
		return nil
	}
	return fmt.Errorf("sending paused since %s: %s", p.since.UTC().Format(time.RFC3339), p.reason)
}
