// Package gcfloor keeps Go's garbage collector from running on a tiny
// heap over and over.
//
// With the default GOGC of 100 the collector runs whenever the heap has
// doubled since the last collection. A daemon with a few thousand
// registrations has a live heap of a few megabytes but allocates about
// 10 KB per push (HTTP/1.1 from Dovecot in, HTTP/2 to Apple out), so
// under load it collected 10-20 times a second and spent about a tenth of
// its CPU on it. Floor raises GOGC after each collection so that the next
// one comes at the larger of twice the live heap (the default) and the
// live heap plus the floor. A big registry (hundreds of megabytes live)
// keeps the default; a small one trades up to the floor in memory for
// far fewer collections. Go's own knobs do not express this: GOGC alone
// scales with the heap, GOMEMLIMIT only ever makes collection sooner.
package gcfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// DefaultFloor is the headroom xapsd gives the heap by default.
const DefaultFloor = 64 << 20

// maxPercent bounds GOGC for an almost empty heap.
const maxPercent = 10000

// heapMinimum is the smallest heap goal Go uses at GOGC=100; it scales
// with GOGC, so a large GOGC on a nearly empty heap would set a goal far
// above live+floor (GOGC 10000 means a 400 MB minimum).
const heapMinimum = 4 << 20

// Floor adjusts GOGC after every collection until Stop.
type Floor struct {
	floor   uint64
	initial int // GOGC before Start, restored by Stop

	mu      sync.Mutex
	stopped bool
	percent int
	looks   int // collections adjust has seen, stopped or not: tests wait for the next
	sample  []metrics.Sample
}

// Start begins adjusting GOGC for a heap floor of floor bytes. It
// assumes GOGC is otherwise at its default; callers leave it alone when
// the admin set GOGC.
func Start(floor uint64) *Floor {
	f := &Floor{floor: floor, sample: []metrics.Sample{
		{Name: "/gc/heap/live:bytes"},
		{Name: "/gc/scan/stack:bytes"},
		{Name: "/gc/scan/globals:bytes"},
	}}
	f.initial = debug.SetGCPercent(100)
	f.percent = 100
	f.adjust()
	f.arm()
	return f
}

// sentinel is garbage from birth; its finalizer runs once per collection
// and arms the next one. It holds a pointer so that it is not placed in
// the tiny allocator's shared blocks, whose finalizers may never run.
type sentinel struct{ f *Floor }

func (f *Floor) arm() {
	runtime.SetFinalizer(&sentinel{f: f}, func(s *sentinel) {
		if s.f.adjust() {
			s.f.arm()
		}
	})
}

// adjust sets GOGC from the live heap; false once stopped.
func (f *Floor) adjust() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.looks++
	if f.stopped {
		return false
	}
	metrics.Read(f.sample)
	var v [3]uint64
	for i, s := range f.sample {
		if s.Value.Kind() == metrics.KindUint64 {
			v[i] = s.Value.Uint64()
		}
	}
	p := percentFor(v[0], v[1]+v[2], f.floor)
	if p != f.percent {
		debug.SetGCPercent(p)
		f.percent = p
	}
	return true
}

// percentFor is the GOGC that puts the next collection at about
// max(2*live, live+floor), and keeps Go's scaled heap minimum from
// putting it any later. Go grows the heap goal by GOGC percent of the
// live heap plus the goroutine stacks and globals it scans (scan), so
// they count here too: with 1,000 pushes in flight their stacks alone
// are megabytes, and leaving them out multiplied the goal several times.
func percentFor(live, scan, floor uint64) int {
	base := live + scan
	if live == 0 || base >= floor {
		return 100
	}
	return int(max(100, min(floor*100/base, (live+floor)*100/heapMinimum, maxPercent)))
}

// Percent is the GOGC value in force.
func (f *Floor) Percent() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.percent
}

// Stop ends the adjustments and restores the GOGC found at Start.
func (f *Floor) Stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return
	}
	f.stopped = true
	debug.SetGCPercent(f.initial)
}
