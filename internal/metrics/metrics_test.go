package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestPushAndRequestCounters(t *testing.T) {
	m := New()
	m.ObservePush("delivered", 200, "", 10*time.Millisecond)
	m.ObservePush("retrying", 0, "dial tcp: connection refused", 0)
	m.ObservePush("retrying", 503, "ServiceUnavailable", time.Millisecond)
	m.ObservePush("failed", 400, "SomethingNew", time.Millisecond)
	if got := testutil.ToFloat64(m.pushes.WithLabelValues("retrying", "0", "transport")); got != 1 {
		t.Errorf("transport errors = %v", got)
	}
	if got := testutil.ToFloat64(m.pushes.WithLabelValues("failed", "400", "other")); got != 1 {
		t.Errorf("unknown reason not folded into other: %v", got)
	}
	if got := testutil.ToFloat64(m.retries); got != 2 {
		t.Errorf("retries = %v", got)
	}
	m.ObserveRequest("/register", 200, time.Millisecond)
	m.ObserveRequest("/etc/passwd", 404, time.Millisecond)
	if got := testutil.ToFloat64(m.requests.WithLabelValues("other", "404")); got != 1 {
		t.Errorf("unknown path not folded: %v", got)
	}
}

func TestServerEndpoints(t *testing.T) {
	expiry := time.Now().Add(48 * time.Hour)
	m := New()
	m.Watch(Sources{
		QueueDepth:        func() (int, int) { return 7, 3 },
		Registrations:     func() (int, int) { return 2, 5 },
		DelayedPending:    func() int { return 4 },
		CredentialExpiry:  func() time.Time { return expiry },
		RegistryDamage:    func() int { return 3 },
		SendingPaused:     func() string { return "credential" },
		RegistryWritable:  func() bool { return true },
		RegistryFollowing: func() bool { return false },
		APNsConnections:   func() int { return 2 },
	})
	m.ObserveSync(12, 2*time.Millisecond)
	m.ObserveConnect(nil)
	m.ObserveConnect(errors.New("connection refused"))
	m.ObserveConnect(errors.New("connection reset"))
	ready := errors.New("no usable push credential")
	notes := []string{"registry: database.json was damaged: 97 registrations kept"}
	s, err := Listen("127.0.0.1:0", m, ServerOptions{Checks: Checks{Ready: func() error { return ready }, Notes: func() []string { return notes }}})
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	defer s.Shutdown(context.Background())
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + s.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("/metrics")
	for _, want := range []string{"xapsd_apns_queue_depth 7", "xapsd_apns_in_flight 3", "xapsd_registry_registrations 5",
		"xapsd_registry_users 2", "xapsd_scheduler_pending 4", "xapsd_registry_sync_records_count 1", "xapsd_registry_damaged 3", "xapsd_credential_expiry_seconds 1727",
		`xapsd_apns_sending_paused{cause="credential"} 1`, `xapsd_apns_sending_paused{cause="unreachable"} 0`,
		`xapsd_apns_connections_total{result="ok"} 1`, `xapsd_apns_connections_total{result="failed"} 2`,
		"xapsd_registry_writable 1", "xapsd_registry_following 0", "xapsd_apns_open_connections 2"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics (%d) lacks %q", code, want)
		}
	}
	if code, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "no usable push credential") {
		t.Errorf("/readyz = %d %q", code, body)
	}
	ready = nil
	if code, body := get("/readyz"); code != 200 || body != "ok\n"+notes[0]+"\n" {
		t.Errorf("/readyz when ready = %d %q, want ok and the note", code, body)
	}
	// Profiles only when metricsPprof asks for them.
	if code, _ := get("/debug/pprof/"); code != 404 {
		t.Errorf("/debug/pprof/ without Pprof = %d, want 404", code)
	}
	p, err := Listen("127.0.0.1:0", m, ServerOptions{Pprof: true})
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve()
	defer p.Shutdown(context.Background())
	resp, err := http.Get("http://" + p.Addr() + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/debug/pprof/ with Pprof = %d", resp.StatusCode)
	}
}
