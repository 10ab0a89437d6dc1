package gcfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"testing"

	"github.com/xapsd/xapsd/internal/testutil"
)

func gogc() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

func TestPercentForPutsTheNextCollectionAtLivePlusFloor(t *testing.T) {
	for _, c := range []struct {
		live, scan, floor uint64
		want              int
	}{
		{0, 0, 64 << 20, 100},              // nothing measured yet: the default
		{8 << 20, 0, 64 << 20, 800},        // 8 MB live: next collection at 72 MB
		{32 << 20, 0, 64 << 20, 200},       // 32 MB live: at 96 MB
		{64 << 20, 0, 64 << 20, 100},       // twice the live heap is live+floor already
		{300 << 20, 0, 64 << 20, 100},      // a big registry keeps the default
		{1, 0, 64 << 20, 1600},             // an empty heap: Go's 4 MB minimum x 16 = 64 MB
		{1 << 20, 0, 64 << 20, 1625},       // 1 MB live: the minimum decides, 65 MB
		{1, 0, 1 << 40, maxPercent},        // bounded whatever the floor
		{4 << 20, 17 << 20, 64 << 20, 304}, // stacks of 1,000 pushes in flight: 4 + 21 x 3.04 = 68 MB
		{4 << 20, 64 << 20, 64 << 20, 100}, // stacks alone above the floor: the default
	} {
		got := percentFor(c.live, c.scan, c.floor)
		if got != c.want {
			t.Errorf("percentFor(%d, %d, %d) = %d, want %d", c.live, c.scan, c.floor, got, c.want)
		}
	}
}

// deepStack holds a goroutine n frames deep, each frame with pointers
// for the collector to scan, until release closes.
//
//go:noinline
func deepStack(n int, p *int, started *sync.WaitGroup, release chan struct{}) int {
	if n == 0 {
		started.Done()
		<-release
		return *p
	}
	var frame [12]*int
	for i := range frame {
		frame[i] = p
	}
	r := deepStack(n-1, frame[n%12], started, release)
	runtime.KeepAlive(&frame)
	return r
}

// The goal Go sets from the percent stays near live+floor when goroutine
// stacks are a large part of what it scans.
func TestGoalWithManyGoroutines(t *testing.T) {
	before := debug.SetGCPercent(100)
	defer debug.SetGCPercent(before)
	release := make(chan struct{})
	var started sync.WaitGroup
	for range 1000 {
		started.Add(1)
		go deepStack(100, new(int), &started, release) // a stack like a push's, deep in HTTP/2
	}
	started.Wait()
	defer close(release)

	const floor = 64 << 20
	f := Start(floor)
	defer f.Stop()
	goal := func() uint64 {
		s := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	waitFor(t, "GOGC adjusted", func() bool { return f.Percent() > 100 })
	live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(live)
	if g, limit := goal(), live[0].Value.Uint64()+floor+floor/4; g > limit {
		t.Fatalf("heap goal %d MB with 1,000 goroutines, want about live + %d MB (at most %d MB)", g>>20, floor>>20, limit>>20)
	}
}

// adjustments counts the collections f has seen.
func (f *Floor) adjustments() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.looks
}

// waitFor waits until cond holds, collecting garbage so that the
// finalizer that adjusts GOGC gets to run.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !testutil.Wait(testutil.Patience, func() bool { runtime.GC(); return cond() }) {
		t.Fatalf("%s: not within %v (GOGC %d)", what, testutil.Patience, gogc())
	}
}

func TestFloorRaisesGOGCForASmallHeapAndStopRestoresIt(t *testing.T) {
	before := debug.SetGCPercent(100)
	defer debug.SetGCPercent(before)

	// This test binary's live heap is a few megabytes, far below 256 MB.
	f := Start(256 << 20)
	waitFor(t, "GOGC raised after collections", func() bool { return gogc() > 1000 && f.Percent() == gogc() })
	f.Stop()
	if got := gogc(); got != 100 {
		t.Fatalf("GOGC %d after Stop, want the 100 in force at Start", got)
	}
	// Collections after Stop leave GOGC alone: the last finalizer, which
	// would have changed it, runs and does nothing.
	debug.SetGCPercent(150)
	seen := f.adjustments()
	waitFor(t, "the finalizer's run after Stop", func() bool { return f.adjustments() > seen })
	if got := gogc(); got != 150 {
		t.Fatalf("GOGC changed to %d after Stop", got)
	}
}

func TestFloorKeepsTheDefaultForALargeHeap(t *testing.T) {
	before := debug.SetGCPercent(100)
	defer debug.SetGCPercent(before)
	// A floor of one byte is below any live heap: GOGC stays at 100.
	f := Start(1)
	defer f.Stop()
	seen := f.adjustments()
	waitFor(t, "an adjustment after a collection", func() bool { return f.adjustments() > seen })
	if got := gogc(); got != 100 || f.Percent() != 100 {
		t.Fatalf("GOGC %d (Percent %d), want 100", got, f.Percent())
	}
}
