package filestore

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/registry"
)

// BenchmarkRegisterParallel: durable registrations from concurrent
// clients, each acknowledged after its group's fsync.
func BenchmarkRegisterParallel(b *testing.B) {
	r, err := openWith(defaults(filepath.Join(b.TempDir(), "db.json")))
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	var n atomic.Int64
	b.SetParallelism(16) // 32 clients on 2 CPUs
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			err := r.Register(context.Background(), registry.Registration{
				Key:       registry.Key{User: fmt.Sprintf("u%d", i), AccountID: fmt.Sprintf("A%d", i), DeviceToken: fmt.Sprintf("%064x", i)},
				Mailboxes: []string{"INBOX"}})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkLookup(b *testing.B) {
	path := filepath.Join(b.TempDir(), "db.json")
	writeSnapshotFile(b, path, 100000)
	r, err := openWith(defaults(path, func(s *setup) { s.Now = func() time.Time { return time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC) } }))
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			if res := r.Lookup(fmt.Sprintf("user%d@example.com", i%100000), "INBOX", false); len(res.Targets) != 1 {
				b.Fatal("lookup failed")
			}
		}
	})
}

// BenchmarkOpenMillion loads a snapshot of 1,000,000 registrations.
func BenchmarkOpenMillion(b *testing.B) {
	path := filepath.Join(b.TempDir(), "db.json")
	writeSnapshotFile(b, path, 1000000)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		r, err := openWith(defaults(path, func(s *setup) { s.Now = func() time.Time { return time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC) } }))
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/load")
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "MB-heap")
		b.StopTimer()
		// As after a crash: no final snapshot, which a loop would
		// otherwise measure too.
		seg := jr(r).segPath
		crash(r)
		os.Remove(seg)
		b.StartTimer()
	}
}

func writeSnapshotFile(b *testing.B, path string, n int) {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	sw := newSnapshotWriter(w, 0)
	ts := time.Date(2026, 10, 30, 0, 0, 0, 0, time.UTC)
	for i := range n {
		sw.add(record{User: fmt.Sprintf("user%d@example.com", i), AccountID: fmt.Sprintf("%08X-CA09-4730-A419-793000CA982E", i),
			DeviceToken: fmt.Sprintf("%064X", i), Mailboxes: []string{"INBOX", "Notes"}, RegistrationTime: ts})
	}
	if err := sw.finish(); err != nil {
		b.Fatal(err)
	}
	w.Flush()
	f.Close()
}
