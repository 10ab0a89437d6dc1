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

	"github.com/xapsd/xapsd/internal/connlimit"
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
	connEvicted  prometheus.Counter
	connects     *prometheus.CounterVec
}

// Sources are read when Prometheus scrapes, so gauges are never stale.
// Each is a part of the daemon that exists when Watch is called; a nil one
// has no gauge.
type Sources struct {
	QueueDepth       func() (queued, inFlight int)
	Registrations    func() (users, registrations int)
	DelayedPending   func() int
	CredentialExpiry func() time.Time // zero: no certificate (token, dry-run or none)
	// RegistryDamage counts what loading the registry found damaged or
	// lost (registry.Health.Damaged).
	RegistryDamage func() int
	// RegistryWritable says whether the registry takes writes now (no
	// write error since the last one that succeeded).
	RegistryWritable func() bool
	// RegistryFollowing, with PostgreSQL only, says whether this daemon
	// hears the changes other daemons commit.
	RegistryFollowing func() bool
	// Connections counts the plugin API's open connections.
	Connections func() int
	// APNsConnections counts the open connections to APNs of the
	// credential in use.
	APNsConnections func() int
	// SendingPaused says why pushes are held: "credential" (APNs refuses
	// it), "unreachable" (xapsd cannot connect), or "" when they go out.
	SendingPaused func() string
}

// New builds the collectors and registers them with a fresh registry; the
// gauges of the daemon's parts follow with Watch, once the parts exist.
func New() *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry()}
	m.pushes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "xapsd_apns_pushes_total",
		Help: "Push attempts by outcome (delivered, dry-run, retrying, removed, failed, expired, held), HTTP status (0 = transport error) and APNs reason.",
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
		Help:    "Time to make one batch of registry changes durable: one journal write and fsync, or one PostgreSQL commit.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
	})
	m.syncRecords = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "xapsd_registry_sync_records",
		Help:    "Registry changes made durable together (group commit: one fsync of the journal, or one PostgreSQL transaction).",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
	})
	m.connEvicted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "xapsd_pluginapi_connections_evicted_total",
		Help: "Idle or silent plugin API connections closed to make room at the connection limit.",
	})
	m.connects = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "xapsd_apns_connections_total",
		Help: "Attempts to connect to APNs by result: ok (connected), failed (could not connect, or lost the connection before APNs answered on it).",
	}, []string{"result"})
	m.connects.WithLabelValues("ok")
	m.connects.WithLabelValues("failed")
	m.Registry.MustRegister(m.pushes, m.pushDuration, m.retries, m.requests, m.reqDuration, m.syncDuration, m.syncRecords, m.connEvicted, m.connects,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Watch adds the gauges of src, read at each scrape. Call it once, after
// the parts exist and before /metrics is served.
func (m *Metrics) Watch(src Sources) {
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
	if c := src.Connections; c != nil {
		gauge("xapsd_pluginapi_connections", "Open connections to the plugin API (bounded below the file limit).",
			func() float64 { return float64(c()) })
	}
	if c := src.APNsConnections; c != nil {
		gauge("xapsd_apns_open_connections", "Open HTTP/2 connections to APNs of the credential in use (at most apnsMaxConnections; more than one only while one cannot carry the pushes).",
			func() float64 { return float64(c()) })
	}
	if d := src.RegistryDamage; d != nil {
		gauge("xapsd_registry_damaged", "Damaged lines and records skipped, and lost registry files, found when the registry was loaded at start; 0 when it loaded cleanly. /readyz says what.",
			func() float64 { return float64(d()) })
	}
	one := func(f func() bool) func() float64 {
		return func() float64 {
			if f() {
				return 1
			}
			return 0
		}
	}
	if w := src.RegistryWritable; w != nil {
		gauge("xapsd_registry_writable", "1 while the registry takes writes; 0 after a failed write (disk full, the database unreachable) until one succeeds. /readyz says why.",
			one(w))
	}
	if f := src.RegistryFollowing; f != nil {
		gauge("xapsd_registry_following", "PostgreSQL only: 1 while this daemon hears the changes other daemons commit (LISTEN), 0 while it does not and may push from stale registrations.",
			one(f))
	}
	if p := src.SendingPaused; p != nil {
		for _, cause := range []string{"credential", "unreachable"} {
			m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name:        "xapsd_apns_sending_paused",
				Help:        "1 while pushes are held because APNs refuses the credential (cause=credential) or cannot be reached (cause=unreachable); /readyz says why.",
				ConstLabels: prometheus.Labels{"cause": cause},
			}, func() float64 {
				if p() == cause {
					return 1
				}
				return 0
			}))
		}
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

// ObserveConnect counts one attempt to connect to APNs.
func (m *Metrics) ObserveConnect(err error) {
	if err != nil {
		m.connects.WithLabelValues("failed").Inc()
	} else {
		m.connects.WithLabelValues("ok").Inc()
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

// ObserveEviction counts one connection closed to make room.
func (m *Metrics) ObserveEviction() { m.connEvicted.Inc() }

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
// means fine, an error says why not. Notes, when set, adds lines to a
// ready /readyz: what an operator should know although xapsd works, such
// as a registry salvaged at start.
type Checks struct {
	Alive func() error
	Ready func() error
	Notes func() []string
}

// ServerOptions configures Listen.
type ServerOptions struct {
	Checks
	// Pprof serves Go's profiles under /debug/pprof/ (metricsPprof):
	// they show memory contents and cost CPU, so only on request.
	Pprof bool
	// MaxConns bounds the listener's connections (0: no bound): a budget
	// of its own, so that health checks answer however many connections
	// the plugin port holds.
	MaxConns int
}

// Listen binds addr and returns a server ready to Serve.
func Listen(addr string, m *Metrics, o ServerOptions) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", check(o.Alive, nil))
	mux.HandleFunc("GET /readyz", check(o.Ready, o.Notes))
	if o.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	srv.Handler = mux
	if o.MaxConns > 0 {
		pool := connlimit.New(o.MaxConns)
		ln = pool.Listener(ln)
		pool.Configure(srv)
	}
	return &Server{ln: ln, srv: srv}, nil
}

func check(f func() error, notes func() []string) http.HandlerFunc {
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
		if notes != nil {
			for _, n := range notes() {
				w.Write([]byte(n + "\n"))
			}
		}
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

// Close releases a listener that never served (a start that failed).
func (s *Server) Close() error {
	s.srv.Close()
	return s.ln.Close()
}
