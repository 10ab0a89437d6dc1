package logging

import (
	"io"
	"sync"
	"time"
)

// GatherInterval is how long the Writer gathers lines after a write
// before it writes again.
const GatherInterval = time.Millisecond

// maxGathered bounds what waits: a line that finds this much waiting is
// written, with what waits before it, by the goroutine logging it.
const maxGathered = 256 << 10

// Writer writes log lines to an io.Writer with fewer write system calls
// under load: a line that comes while the Writer is idle is written at
// once (by its own goroutine, so the caller does not wait for the
// write), and lines that come within GatherInterval of a write are
// gathered and written together at its end. At one line per push, a
// write per line was 3 % of the daemon's CPU.
//
// Lines keep their order. Close writes what waits; the daemon calls it
// as it stops, so a clean stop loses nothing (kill -9 may lose the lines
// of the last millisecond, which the process had not written yet).
type Writer struct {
	out io.Writer

	mu      sync.Mutex
	waiting []byte // lines not written yet
	closed  bool

	writing sync.Mutex // held while writing to out: one write at a time, in order
	spare   []byte     // the buffer being written, reused (under writing)

	wake chan struct{}
	done chan struct{}
	quit chan struct{}
}

// NewWriter starts a Writer on out. Stop it with Close.
func NewWriter(out io.Writer) *Writer {
	w := &Writer{out: out, wake: make(chan struct{}, 1), done: make(chan struct{}), quit: make(chan struct{})}
	go w.run()
	return w
}

// Write takes one log line (logrus writes each line with one call). It
// returns before the line is written; write errors are not reported, as
// logrus could only print them to the same place.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		// After Close: straight through (after anything still
		// waiting), so that nothing is lost.
		w.writing.Lock()
		defer w.writing.Unlock()
		w.flushLocked()
		return w.out.Write(p)
	}
	first := len(w.waiting) == 0
	w.waiting = append(w.waiting, p...)
	full := len(w.waiting) >= maxGathered
	w.mu.Unlock()
	switch {
	case full:
		w.Flush()
	case first:
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

// Flush writes the lines that wait.
func (w *Writer) Flush() {
	w.writing.Lock()
	defer w.writing.Unlock()
	w.flushLocked()
}

// flushLocked is Flush with w.writing held.
func (w *Writer) flushLocked() {
	w.mu.Lock()
	w.waiting, w.spare = w.spare[:0], w.waiting
	w.mu.Unlock()
	if len(w.spare) > 0 {
		_, _ = w.out.Write(w.spare)
	}
	if cap(w.spare) > maxGathered {
		w.spare = nil // a burst's buffer is not kept
	}
}

// Close writes what waits and stops the Writer; later lines are written
// at once.
func (w *Writer) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	w.mu.Unlock()
	close(w.quit)
	<-w.done
	w.Flush()
	return nil
}

func (w *Writer) run() {
	defer close(w.done)
	gather := time.NewTimer(GatherInterval)
	gather.Stop()
	for {
		select {
		case <-w.wake:
		case <-w.quit:
			return
		}
		w.Flush()
		// Lines that come now wait for the end of the interval and go
		// out in one write.
		gather.Reset(GatherInterval)
		select {
		case <-gather.C:
		case <-w.quit:
			gather.Stop()
			return
		}
	}
}
