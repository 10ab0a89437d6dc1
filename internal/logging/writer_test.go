package logging

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// recorder is an io.Writer that keeps every write apart.
type recorder struct {
	mu     sync.Mutex
	writes [][]byte
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writes = append(r.writes, bytes.Clone(p))
	return len(p), nil
}

func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return string(bytes.Join(r.writes, nil))
}

// Every line logged before Close is written by then, whole and in the
// order of each goroutine's lines, through a logrus logger as the daemon
// has it.
func TestWriterLosesNothingAtClose(t *testing.T) {
	var out recorder
	w := NewWriter(&out)
	l, err := New(w, "info", "text")
	if err != nil {
		t.Fatal(err)
	}
	const goroutines, lines = 8, 2000
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range lines {
				l.WithField("g", g).WithField("i", i).Info("push")
			}
		})
	}
	wg.Wait()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	next := make([]int, goroutines)
	n := 0
	for _, line := range strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n") {
		var g, i int
		if _, err := fmt.Sscanf(line[strings.Index(line, " g="):], " g=%d i=%d", &g, &i); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if i != next[g] {
			t.Fatalf("goroutine %d: line %d where %d was due", g, i, next[g])
		}
		next[g]++
		n++
	}
	if n != goroutines*lines {
		t.Errorf("%d lines written, want %d", n, goroutines*lines)
	}
}

// A line logged after Close is written at once, after what waited.
func TestWriterWritesThroughAfterClose(t *testing.T) {
	var out recorder
	w := NewWriter(&out)
	w.Write([]byte("one\n"))
	w.Close()
	w.Write([]byte("two\n"))
	if got := out.String(); got != "one\ntwo\n" {
		t.Errorf("written %q", got)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
