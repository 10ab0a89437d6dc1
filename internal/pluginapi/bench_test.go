package pluginapi

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/xapsd/xapsd/internal/notify"
)

type countingNotifier struct{ n int }

func (c *countingNotifier) Notify(string, string, []string) notify.Status {
	c.n++
	return notify.Pushed
}

// BenchmarkNotify is the daemon's side of one /notify, from a parsed HTTP
// request to the answer, without the network.
func BenchmarkNotify(b *testing.B) {
	n := &countingNotifier{}
	h := NewHandler(Options{Notifier: n})
	body := strings.NewReader(pluginNotify)
	req := httptest.NewRequest(http.MethodPost, "/notify", body)
	rec := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		body.Reset(pluginNotify)
		// A fresh body each time, as each request has: ServeHTTP wraps
		// the one it gets, and a request used again would carry one
		// wrapper more per iteration.
		req.Body = io.NopCloser(body)
		rec.Body.Reset()
		h.ServeHTTP(rec, req)
	}
	if n.n == 0 {
		b.Fatal("the notifier was never called")
	}
}
