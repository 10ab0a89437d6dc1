package apns

import (
	"time"

	"github.com/xapsd/xapsd/internal/registry"
)

// pacer keeps a device from being pushed more than once per interval:
// it says how long a push must still wait, and the events meanwhile
// gather into that one push. It remembers when each device was last
// pushed in two generations of at least interval each, so memory follows
// the devices pushed recently, not every device ever pushed. A zero
// interval paces nothing and remembers nothing.
type pacer struct {
	interval      time.Duration
	recent, older map[registry.Key]time.Time
	since         time.Time // when recent began
}

func newPacer(interval time.Duration, now time.Time) pacer {
	if interval <= 0 {
		return pacer{}
	}
	return pacer{interval: interval, recent: map[registry.Key]time.Time{}, older: map[registry.Key]time.Time{}, since: now}
}

// wait says how long a push to k must wait for the interval.
func (p *pacer) wait(k registry.Key, now time.Time) time.Duration {
	if p.recent == nil {
		return 0
	}
	last, ok := p.recent[k]
	if !ok {
		last, ok = p.older[k]
	}
	if !ok {
		return 0
	}
	return last.Add(p.interval).Sub(now)
}

// pushed notes a push to k.
func (p *pacer) pushed(k registry.Key, now time.Time) {
	if p.recent == nil {
		return
	}
	if now.Sub(p.since) >= p.interval {
		p.older, p.recent, p.since = p.recent, make(map[registry.Key]time.Time, len(p.recent)), now
	}
	p.recent[k] = now
}
