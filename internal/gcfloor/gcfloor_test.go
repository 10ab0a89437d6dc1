package gcfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func gogc() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

func TestPercentFor(t *testing.T) {
	for _, c := range []struct {
		live, floor uint64
		want        int
	}{
		{0, 64 << 20, 100},         // nothing measured yet: the default
		{8 << 20, 64 << 20, 800},   // 8 MB live: next collection at 72 MB
		{32 << 20, 64 << 20, 200},  // 32 MB live: at 96 MB
		{64 << 20, 64 << 20, 100},  // twice the live heap is live+floor already
		{300 << 20, 64 << 20, 100}, // a big registry keeps the default
		{1, 64 << 20, 1600},        // an empty heap: Go's 4 MB minimum x 16 = 64 MB
		{1 << 20, 64 << 20, 1625},  // 1 MB live: the minimum decides, 65 MB
		{1, 1 << 40, maxPercent},   // bounded whatever the floor
	} {
		if got := percentFor(c.live, c.floor); got != c.want {
			t.Errorf("percentFor(%d, %d) = %d, want %d", c.live, c.floor, got, c.want)
		}
	}
}

// waitFor polls until cond holds, collecting garbage so that the
// finalizer that adjusts GOGC gets to run.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10 s (GOGC %d)", what, gogc())
		}
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
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
	// Collections after Stop leave GOGC alone.
	debug.SetGCPercent(150)
	runtime.GC()
	runtime.GC()
	time.Sleep(20 * time.Millisecond)
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
	runtime.GC()
	runtime.GC()
	time.Sleep(20 * time.Millisecond)
	if got := gogc(); got != 100 || f.Percent() != 100 {
		t.Fatalf("GOGC %d (Percent %d), want 100", got, f.Percent())
	}
}
