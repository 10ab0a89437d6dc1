package notify

import (
	"context"
	"fmt"
	"testing"

	"github.com/xapsd/xapsd/internal/history"
	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/registry/registrytest"
)

type discard struct{}

func (discard) Delay(registry.Key)   {}
func (discard) Cancel(registry.Key)  {}
func (discard) Enqueue(registry.Key) {}

// BenchmarkNotify is one new-mail event routed to a device, among 20,000
// users each notified in turn (more than the history keeps, so it keeps
// forgetting and reusing records), without and with the per-user
// history that xapsd diagnose reads: the history's cost on /notify.
func BenchmarkNotify(b *testing.B) {
	r := registrytest.Open(b, registrytest.Defaults())
	const users = 20000
	names := make([]string, users)
	for i := range names {
		names[i] = fmt.Sprintf("user%d@example.org", i)
		k := registry.Key{User: names[i], AccountID: "ACC", DeviceToken: fmt.Sprintf("%064X", i)}
		if err := r.Register(context.Background(), registry.Registration{Key: k, Mailboxes: []string{"INBOX"}}); err != nil {
			b.Fatal(err)
		}
	}
	events := []string{EventNew}
	for _, tc := range []struct {
		name string
		hist Recorder
	}{{"without-history", nil}, {"with-history", history.New(history.Options{})}} {
		b.Run(tc.name, func(b *testing.B) {
			s := &Service{Registry: r, Scheduler: discard{}, Sender: discard{}, History: tc.hist}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				s.Notify(names[i%users], "INBOX", events)
				i++
			}
		})
	}
}
