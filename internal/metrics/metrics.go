// Package metrics exposes what xapsd is doing to Prometheus, and serves
// the monitoring endpoints (/metrics, /healthz, /readyz, /debug/pprof/)
// on their own listener, loopback by default, apart from the plugin API.
//
// The collectors live in one Metrics value built by the daemon; nothing
// registers into Prometheus's global registry. Label values are bounded:
// HTTP paths are the three known ones or "other", APNs reasons are
// Apple's documented words or "other".
package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds xapsd's collectors.
type Metrics struct {
	Registry *prometheus.Registry

	pushes       *prometheus.CounterVec
	pushDuration prometheus.Histogram
	retries      prometheus.Counter
	requests     *prometheus.CounterVec
	reqDuration  *prometheus.HistogramVec
	syncDuration prometheus.Histogram
	syncRecords  prometheus.Histogram
}

// Sources are read when Prometheus scrapes, so gauges are never stale.
type Sources struct {
	QueueDepth       func() (queued, inFlight int)
	Registrations    func() (users, registrations int)
	DelayedPending   func() int
	CredentialExpiry func() time.Time // zero: no certificate (token, dry-run or none)
}

// New builds the collectors and registers them with a fresh registry.
func New(src Sources) *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry()}
	m.pushes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "xapsd_apns_pushes_total",
		Help: "Push attempts by outcome (delivered, dry-run, retrying, removed, failed, expired), HTTP status (0 = transport error) and APNs reason.",
	}, []string{"outcome", "status", "reason"})
	m.pushDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "xapsd_apns_push_duration_seconds",
		Help:    "Time from sending a push to Apple's answer.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	})
	m.retries = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "xapsd_apns_retries_total",
		Help: "Push attempts that failed temporarily and were scheduled again.",
	})
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "xapsd_pluginapi_requests_total",
		Help: "Requests from the Dovecot plugin by path and HTTP status.",
	}, []string{"path", "code"})
	m.reqDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "xapsd_pluginapi_request_duration_seconds",
		Help:    "Time to answer the Dovecot plugin, by path.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
	}, []string{"path"})
	m.syncDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "xapsd_registry_sync_duration_seconds",
		Help:    "Time to write and fsync one batch of registry journal records.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
	})
	m.syncRecords = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "xapsd_registry_sync_records",
		Help:    "Journal records made durable by one fsync (group commit).",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
	})
	m.Registry.MustRegister(m.pushes, m.pushDuration, m.retries, m.requests, m.reqDuration, m.syncDuration, m.syncRecords,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	gauge := func(name, help string, f func() float64) {
		if f != nil {
			m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
		}
	}
	if q := src.QueueDepth; q != nil {
		gauge("xapsd_apns_queue_depth", "Devices waiting for a push, including those waiting for a retry.",
			func() float64 { n, _ := q(); return float64(n) })
		gauge("xapsd_apns_in_flight", "Pushes sent to Apple and not yet answered.",
			func() float64 { _, n := q(); return float64(n) })
	}
	if r := src.Registrations; r != nil {
		gauge("xapsd_registry_users", "Users with at least one registered device.",
			func() float64 { n, _ := r(); return float64(n) })
		gauge("xapsd_registry_registrations", "Registered (user, account id, device token) entries.",
			func() float64 { _, n := r(); return float64(n) })
	}
	if d := src.DelayedPending; d != nil {
		gauge("xapsd_scheduler_pending", "Devices with a delayed (debounced) push pending.",
			func() float64 { return float64(d()) })
	}
	if e := src.CredentialExpiry; e != nil {
		gauge("xapsd_credential_expiry_seconds", "Seconds until the push certificate expires (negative: expired; 0: a credential without expiry, such as a token or dry-run).",
			func() float64 {
				t := e()
				if t.IsZero() {
					return 0
				}
				return time.Until(t).Seconds()
			})
	}
	return m
}

// knownReasons are APNs's documented reasons; anything else is "other"
// so that a misbehaving peer cannot grow the label set.
var knownReasons = map[string]bool{
	"BadCollapseId": true, "BadDeviceToken": true, "BadExpirationDate": true, "BadMessageId": true,
	"BadPriority": true, "BadTopic": true, "DeviceTokenNotForTopic": true, "DuplicateHeaders": true,
	"IdleTimeout": true, "InvalidPushType": true, "MissingDeviceToken": true, "MissingTopic": true,
	"PayloadEmpty": true, "TopicDisallowed": true, "BadCertificate": true, "BadCertificateEnvironment": true,
	"ExpiredProviderToken": true, "Forbidden": true, "InvalidProviderToken": true, "MissingProviderToken": true,
	"UnrelatedKeyIdInToken": true, "BadEnvironmentKeyIdInToken": true, "BadPath": true, "MethodNotAllowed": true,
	"ExpiredToken": true, "Unregistered": true, "PayloadTooLarge": true, "TooManyProviderTokenUpdates": true,
	"TooManyRequests": true, "InternalServerError": true, "ServiceUnavailable": true, "Shutdown": true,
}

// ObservePush counts one push attempt.
func (m *Metrics) ObservePush(outcome string, status int, reason string, d time.Duration) {
	switch {
	case status == 0:
		reason = "transport"
	case reason == "":
	case !knownReasons[reason]:
		reason = "other"
	}
	m.pushes.WithLabelValues(outcome, strconv.Itoa(status), reason).Inc()
	if status != 0 {
		m.pushDuration.Observe(d.Seconds())
	}
	if outcome == "retrying" {
		m.retries.Inc()
	}
}

// ObserveRequest counts one plugin API request.
func (m *Metrics) ObserveRequest(path string, status int, d time.Duration) {
	switch path {
	case "/register", "/notify", "/healthz":
	default:
		path = "other"
	}
	m.requests.WithLabelValues(path, strconv.Itoa(status)).Inc()
	m.reqDuration.WithLabelValues(path).Observe(d.Seconds())
}

// ObserveSync records one journal group commit.
func (m *Metrics) ObserveSync(records int, d time.Duration) {
	m.syncDuration.Observe(d.Seconds())
	m.syncRecords.Observe(float64(records))
}

// Server is the monitoring listener.
type Server struct {
	srv *http.Server
	ln  net.Listener
}

// Checks answer /healthz (alive) and /readyz (able to do its job): nil
// means fine, an error says why not.
type Checks struct {
	Alive func() error
	Ready func() error
}

// Listen binds addr and returns a server ready to Serve.
func Listen(addr string, m *Metrics, c Checks) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", check(c.Alive))
	mux.HandleFunc("GET /readyz", check(c.Ready))
	// Profiles for "why is it slow" questions; the listener is loopback
	// unless the admin moves it.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return &Server{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}, nil
}

func check(f func() error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if f != nil {
			if err := f(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				w.Write([]byte(err.Error() + "\n"))
				return
			}
		}
		w.Write([]byte("ok\n"))
	}
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve blocks until Shutdown.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops the listener.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }
