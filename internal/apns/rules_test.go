package apns

import (
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/registry"
)

// The rules on their own, without a Sender or a clock of their own.

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func TestPushQueueHoldsOnePushPerDeviceAndOneMoreBehindAFlight(t *testing.T) {
	q := newPushQueue()
	a, b := registry.Key{DeviceToken: "aa"}, registry.Key{DeviceToken: "bb"}
	q.add(&job{key: a}, true)
	q.add(&job{key: b}, true)
	if !q.has(a) || q.readyLen() != 2 {
		t.Fatalf("two devices: has(a) %v, %d ready", q.has(a), q.readyLen())
	}
	if j := q.take(); j.key != a || q.has(a) || !q.inFlight(a) {
		t.Fatalf("took %v first; a waits %v, in flight %v", j.key, q.has(a), q.inFlight(a))
	}
	q.add(&job{key: a}, true) // an event after the push left
	if n, f := q.depth(); n != 2 || f != 1 {
		t.Fatalf("depth %d waiting, %d in flight; want 2 and 1", n, f)
	}
	q.landed(a)
	if q.busy() {
		t.Error("busy after the only flight landed")
	}
	late := &job{key: registry.Key{DeviceToken: "cc"}}
	q.add(late, false)
	if left := q.stop(); len(left) != 3 || q.release(late) {
		t.Errorf("stop left %d devices, want 3; a stopped queue released a timer's push", len(left))
	}
}

func TestPacerSaysHowLongAndForgetsOldPushes(t *testing.T) {
	k := registry.Key{DeviceToken: "aa"}
	p := newPacer(time.Minute, t0)
	if w := p.wait(k, t0); w != 0 {
		t.Fatalf("never pushed: wait %v", w)
	}
	p.pushed(k, t0)
	if w := p.wait(k, t0.Add(20*time.Second)); w != 40*time.Second {
		t.Errorf("20 s after a push: wait %v, want 40 s", w)
	}
	// Two generations later the push is forgotten.
	p.pushed(registry.Key{DeviceToken: "bb"}, t0.Add(time.Minute))
	p.pushed(registry.Key{DeviceToken: "bb"}, t0.Add(2*time.Minute))
	if _, ok := p.older[k]; ok {
		t.Error("a push two intervals old is still remembered")
	}
	if none := newPacer(0, t0); none.wait(k, t0) != 0 || none.recent != nil {
		t.Error("a zero interval paces or remembers")
	}
}

func TestCredentialPauseLetsOneProbeAtATimeAndEndsOnAnAnswer(t *testing.T) {
	var p credentialPause
	if ok, probe, _ := p.admit(t0); !ok || probe {
		t.Fatal("not paused: a push must go, and not as a probe")
	}
	p.start("refused", t0.Add(time.Minute), t0)
	if ok, _, wait := p.admit(t0); ok || wait != time.Minute || !p.holds() {
		t.Fatalf("paused: admit %v, wait %v", ok, wait)
	}
	if ok, probe, _ := p.admit(t0.Add(time.Minute)); !ok || !probe {
		t.Fatal("at probeAt one push goes as the probe")
	}
	if ok, _, wait := p.admit(t0.Add(time.Minute)); ok || wait != 0 {
		t.Fatal("a second probe went while the first was on its way")
	}
	p.returned()
	p.later(t0.Add(time.Minute), time.Minute)
	if p.answered(false) || !p.active() {
		t.Fatal("a refusal ended the pause")
	}
	if !p.answered(true) || p.active() || p.err() != nil {
		t.Fatal("an answer about a device did not end the pause")
	}
}

func TestTokenGuardKeepsWhenBadTokensAreCommonOrTheCredentialIsNew(t *testing.T) {
	g := newTokenGuard(time.Hour, t0)
	if keep, warn := g.keep(t0.Add(time.Minute)); !keep || !warn {
		t.Fatalf("just after a change: keep %v, warn %v; want both", keep, warn)
	}
	later := t0.Add(2 * time.Hour)
	for range 10 {
		g.note(false)
	}
	if keep, _ := g.keep(later); keep {
		t.Fatal("one bad token among eleven answers was kept")
	}
	warnings := 0
	var keep, warn bool
	for range 21 {
		keep, warn = g.keep(later)
		if warn {
			warnings++
		}
	}
	if !keep || warnings != 1 {
		t.Fatalf("bad tokens the majority: keep %v after %d warnings; want kept, and one warning", keep, warnings)
	}
	if _, warn := g.keep(later.Add(time.Hour)); !warn {
		t.Error("no warning an hour later")
	}
	if n, bad := g.window(); n != 34 || bad != 24 {
		t.Errorf("window %d answers, %d bad; want 34 and 24", n, bad)
	}
	g.changed(later)
	if n, _ := g.window(); n != 0 {
		t.Error("a new credential kept the old one's answers")
	}
}
