// Package daemon wires xapsd together and runs it: it builds each part
// from the configuration, serves the plugin API, reloads credentials and
// log settings on SIGHUP, and shuts down in order so that nothing
// acknowledged is lost.
package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/apns"
	"github.com/xapsd/xapsd/internal/config"
	"github.com/xapsd/xapsd/internal/connlimit"
	"github.com/xapsd/xapsd/internal/creds"
	"github.com/xapsd/xapsd/internal/ctl"
	"github.com/xapsd/xapsd/internal/diagnose"
	"github.com/xapsd/xapsd/internal/filestore"
	"github.com/xapsd/xapsd/internal/history"
	"github.com/xapsd/xapsd/internal/logging"
	"github.com/xapsd/xapsd/internal/metrics"
	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/regularfile"
	"github.com/xapsd/xapsd/internal/scheduler"
	"github.com/xapsd/xapsd/internal/statedir"
)

// Daemon is one running xapsd.
type Daemon struct {
	log    *logrus.Logger
	state  statedir.Dir // the folder of databaseFile
	cfg    atomic.Pointer[config.Config]
	cred   atomic.Pointer[credential]
	reg    *registry.Registry
	files  *filestore.Store // the registry's store with the files; nil with PostgreSQL
	sender *apns.Sender
	sched  *scheduler.Scheduler
	// history is the per-user record of events and pushes that xapsd
	// diagnose reads.
	history *history.History

	servers     []*http.Server
	listeners   []net.Listener // the plugin port, then the TLS listener's
	tlsConfig   *tls.Config
	tlsListener net.Listener    // the one of listeners that serves TLS, if any
	conns       *connlimit.Pool // the plugin listeners' connections
	lastEvict   atomic.Int64    // the last eviction log line (logging.EveryMinute)
	metrics     *metrics.Metrics
	monitor     *metrics.Server
	admin       *ctl.Server
	apple       *appleManager // nil unless the Apple ID manager provides the credential
	expiry      creds.ExpiryWatch
	leftovers   leftovers      // pushes of pending-pushes.json not yet answered
	started     *config.Config // what the listeners, registry and queue were built from
	apnsRoots   *x509.CertPool // trust for APNs (Options.APNsRoots)

	// Background work (start) runs until stopWork, after the drain; wg
	// waits for it and for the listeners.
	stopWork   context.CancelFunc
	wg         sync.WaitGroup
	fileReload chan struct{} // credential files changed on disk
}

// Options are what main hands over.
type Options struct {
	Config *config.Config
	Log    *logrus.Logger
	// Reload receives a value for each SIGHUP.
	Reload <-chan struct{}
	// Ready, if set, is called with the plugin API address once it listens.
	Ready func(addr string)
	// APNsRoots, when set, is what the connections to APNs trust instead
	// of the system's roots: the tests' stand-in for Apple.
	APNsRoots *x509.CertPool
}

// Run builds xapsd, starts it, serves until ctx ends and then stops it in
// order. An error before listening (unreadable registry, port in use) is
// returned at once so the process exits non-zero; a credential that does
// not load is not such an error (brokenCredential).
func Run(ctx context.Context, o Options) error {
	d, err := build(o)
	if err != nil {
		return err
	}
	d.start()
	if o.Ready != nil {
		o.Ready(d.listeners[0].Addr().String())
	}
	d.serve(ctx, o.Reload)
	return d.stop()
}

// build makes every part, in the order they need each other, and takes
// the ports; nothing runs yet. Ports come before the registry: a second
// xapsd started by mistake on the same configuration stops there, before
// it reads or writes any of the running one's files.
func build(o Options) (*Daemon, error) {
	cfg := o.Config
	d := &Daemon{log: o.Log, started: cfg, state: statedir.New(cfg.DatabaseFile), metrics: metrics.New(),
		apnsRoots: o.APNsRoots, fileReload: make(chan struct{}, 1)}
	d.cfg.Store(cfg)
	// A credential that does not load does not stop the start: the daemon
	// runs without one and says why (brokenCredential).
	cred, err := loadCredential(cfg, o.Log.WithField("component", "apns"), time.Now(), d.clientEnv())
	if err != nil {
		cred = brokenCredential(cfg, err)
	}
	secret, err := d.pluginSecret(cfg)
	if err != nil {
		return nil, err
	}
	if err := d.bind(cfg); err != nil {
		return nil, err
	}
	if err := d.openRegistry(cfg); err != nil {
		d.closeBuilt()
		return nil, stateError(cfg, err)
	}
	d.useCredential(cfg, cred)
	d.buildPushing(cfg)
	d.metrics.Watch(d.gauges(cfg))
	d.mount(d.pluginHandler(cfg, secret))
	diag := diagnose.Sources{Daemon: d.status, Registry: d.reg, History: d.history, Queue: d.sender, Delays: d.sched}
	if d.admin, err = ctl.Listen(d.state.AdminSocket(), d.reg, d.sender, diag); err != nil {
		d.stopApple()
		d.closeBuilt()
		return nil, err
	}
	return d, nil
}

// closeBuilt releases what build made when a later step fails.
func (d *Daemon) closeBuilt() {
	for _, ln := range d.listeners {
		ln.Close()
	}
	if d.monitor != nil {
		d.monitor.Close()
	}
	if d.reg != nil {
		d.reg.Close()
	}
}

// start runs the background work and the listeners, and queues the pushes
// the last shutdown left.
func (d *Daemon) start() {
	log := d.log.WithField("component", "daemon")
	d.sendLeftovers()
	work, stop := context.WithCancel(context.Background())
	d.stopWork = stop
	goRun := func(f func(context.Context)) {
		d.wg.Add(1)
		go func() { defer d.wg.Done(); f(work) }()
	}
	goRun(d.sender.Run)
	goRun(d.sched.Run)
	goRun(d.housekeeping)
	d.runApple()
	for i, srv := range d.servers {
		d.goServe(srv, d.listeners[i], "listener")
	}
	plugin, _, limit := connectionBudgets()
	for _, ln := range d.listeners {
		log.WithFields(logrus.Fields{"addr": ln.Addr().String(), "max_connections": plugin, "file_limit": limit}).Info("listening for the Dovecot plugin")
	}
	d.goServeFunc(d.admin.Serve, "admin socket")
	if d.monitor != nil {
		d.goServeFunc(d.monitor.Serve, "monitoring listener")
		log.WithField("addr", d.monitor.Addr()).Info("serving /metrics, /healthz and /readyz")
	}
	d.logSummary(d.cfg.Load())
}

// goServe serves srv on ln until it is shut down.
func (d *Daemon) goServe(srv *http.Server, ln net.Listener, what string) {
	d.goServeFunc(func() error {
		if srv.TLSConfig != nil {
			return srv.ServeTLS(ln, "", "")
		}
		return srv.Serve(ln)
	}, what)
}

// goServeFunc runs serve until it returns, and logs an error that is not
// the end of serving.
func (d *Daemon) goServeFunc(serve func() error, what string) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := serve(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.WithField("component", "daemon").WithError(err).Error(what + " failed")
		}
	}()
}

// serve reloads on SIGHUP and when the credential files change, until ctx
// ends.
func (d *Daemon) serve(ctx context.Context, reload <-chan struct{}) {
	for {
		select {
		case <-reload:
			d.reload()
		case <-d.fileReload:
			d.reload()
		case <-ctx.Done():
			return
		}
	}
}

// stop shuts down in order (shutdown), then ends the background work.
func (d *Daemon) stop() error {
	err := d.shutdown()
	d.stopApple()
	d.stopWork()
	d.wg.Wait()
	return err
}

// bind takes every port (and the TLS listener's certificate) before
// anything is opened or served, so a port in use fails the start before
// it touches the state folder, instead of leaving a half-running daemon.
func (d *Daemon) bind(cfg *config.Config) error {
	pluginConns, metricsConns, limit := connectionBudgets()
	d.conns = connlimit.New(pluginConns)
	d.conns.OnEvict = func() {
		d.metrics.ObserveEviction()
		if logging.EveryMinute(&d.lastEvict) {
			d.log.WithFields(logrus.Fields{"component": "pluginapi", "limit": pluginConns, "file_limit": limit}).
				Warn("connection limit reached: closing connections without the plugin's secret, then the longest-idle ones, to make room; logged at most once a minute")
		}
	}
	lns, err := listenPlugin(cfg, d.log.WithField("component", "daemon"), net.Listen)
	if err != nil {
		return err
	}
	closePlain := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	d.listeners = append(d.listeners, lns...)
	if cfg.TLSEnabled() {
		cert, err := loadKeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			closePlain()
			return fmt.Errorf("load tlsCertfile %s / tlsKeyfile %s: %w", cfg.TLSCertFile, cfg.TLSKeyFile, err)
		}
		tln, err := net.Listen("tcp", cfg.TLSListenAddress())
		if err != nil {
			closePlain()
			return fmt.Errorf("listen on %s (tlsListenAddr/tlsPort): %w", cfg.TLSListenAddress(), err)
		}
		d.tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
			NextProtos: []string{"h2", "http/1.1"}}
		d.tlsListener = tln
		d.listeners = append(d.listeners, tln)
	}
	if cfg.MetricsEnabled() {
		d.monitor, err = metrics.Listen(cfg.MetricsListenAddr, d.metrics,
			metrics.ServerOptions{Checks: metrics.Checks{Ready: d.ready, Notes: d.notes}, Pprof: cfg.MetricsPprof, MaxConns: metricsConns})
		if err != nil {
			for _, ln := range d.listeners {
				ln.Close()
			}
			return fmt.Errorf("listen on %s (metricsListenAddr): %w", cfg.MetricsListenAddr, err)
		}
	}
	return nil
}

// loadKeyPair is tls.LoadX509KeyPair through regularfile, so that a named
// pipe in place of either file cannot hang the start.
func loadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := regularfile.ReadFile(certFile, 0, 0)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM, err := regularfile.ReadFile(keyFile, 0, 0)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

// mount builds the plugin API's servers on the bound listeners, which
// share one connection budget.
func (d *Daemon) mount(h http.Handler) {
	for i, ln := range d.listeners {
		srv := &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       30 * time.Second,
			// Dovecot keeps a connection between requests; two minutes
			// of quiet is long enough to reuse it and short enough that
			// idle ones do not pile up.
			IdleTimeout:    2 * time.Minute,
			MaxHeaderBytes: 64 << 10,
		}
		if ln == d.tlsListener {
			srv.TLSConfig = d.tlsConfig
		}
		// The plugin's connections: the ones with its secret are the
		// last closed for room, the others have FirstRequestDeadline.
		d.conns.Configure(srv)
		d.servers = append(d.servers, srv)
		d.listeners[i] = d.conns.Listener(ln)
	}
}

// Connections are bounded below the file limit (which Go raises to the
// hard limit at start): the metrics listener gets metricsConnBudget of
// its own, and fileReserve descriptors stay for the registry's files,
// the connections to Apple, the admin socket and the logs.
const (
	metricsConnBudget = 32
	fileReserve       = 128
	minPluginConns    = 16
)

func connectionBudgets() (plugin, metricsConns int, limit uint64) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		rl.Cur = 1024
	}
	limit = rl.Cur
	avail := min(rl.Cur, 1<<24) - fileReserve - metricsConnBudget
	if rl.Cur < fileReserve+metricsConnBudget+minPluginConns {
		avail = minPluginConns
	}
	return int(avail), metricsConnBudget, limit
}

func (d *Daemon) topic() (string, error) {
	c := d.cred.Load()
	if err := c.problem(time.Now()); err != nil {
		return "", err
	}
	return c.client.Topic, nil
}

// ready says why xapsd cannot do its job right now, or nil: a usable
// push credential, a registry it can write to, and pushes going out
// (not paused because APNs refuses the credential or cannot be reached).
func (d *Daemon) ready() error {
	if err := d.cred.Load().problem(time.Now()); err != nil {
		return err
	}
	if err := d.reg.Health().WriteErr; err != nil {
		return fmt.Errorf("registry not writable: %w", err)
	}
	if _, err := d.sender.Paused(); err != nil {
		return err
	}
	return nil
}

// readyPublic is ready without the details (file names, errno), for the
// plugin port's /healthz, which anyone who reaches that port can ask.
func (d *Daemon) readyPublic() error {
	if d.cred.Load().problem(time.Now()) != nil {
		return errors.New("no usable push credential")
	}
	if d.reg.Health().WriteErr != nil {
		return errors.New("registry not writable")
	}
	return nil
}

// notes are /readyz's lines for problems xapsd works despite: what
// loading the registry found damaged or lost.
func (d *Daemon) notes() []string {
	var out []string
	for _, n := range d.reg.Health().Damage {
		out = append(out, "registry: "+n)
	}
	return out
}

// housekeeping expires old registrations hourly, and every few seconds
// warns about certificates close to expiry and notices credential files
// replaced on disk (which reload like SIGHUP). A stat of two files is
// cheap; an admin who just copied a renewed certificate in wants it used.
func (d *Daemon) housekeeping(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	lastExpire := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if now.Sub(lastExpire) >= time.Hour {
				lastExpire = now
				n, err := d.reg.Expire(ctx, now)
				l := d.log.WithField("component", "registry")
				if err != nil {
					l.WithError(err).Warn("could not remove the registrations not refreshed within registrationTTL; the next sweep, in an hour, tries again")
				} else if n > 0 {
					l.WithField("removed", n).Info("removed registrations not refreshed within registrationTTL")
				}
			}
			d.checkExpiry()
			if c := d.cred.Load(); len(c.stamps) > 0 && filesChanged(c.stamps) {
				d.log.WithField("component", "daemon").WithField("files", c.sources).Info("credential files changed on disk: reloading")
				select {
				case d.fileReload <- struct{}{}:
				default:
				}
			}
		}
	}
}

// checkExpiry logs each expiry warning of the current certificate once.
func (d *Daemon) checkExpiry() {
	c := d.cred.Load()
	if c.notAfter.IsZero() || len(c.sources) == 0 {
		return
	}
	now := time.Now()
	msg, due := d.expiry.Check(c.sources[0], c.notAfter, now)
	if !due {
		return
	}
	l := d.log.WithField("component", "daemon").WithField("expires", c.notAfter.UTC().Format(time.RFC3339))
	if creds.ExpiryStage(c.notAfter, now) < 0 {
		l.Error(msg)
	} else {
		l.Warn(msg)
	}
}

func (d *Daemon) setCredential(c *credential) {
	old := d.cred.Swap(c)
	d.sender.SetClient(c.client)
	d.checkExpiry()
	if old != nil && old.client != nil && old.client != c.client {
		// Close the old credentials' connection now if it is idle, else
		// once the pushes still on it have had their time.
		old.client.CloseIdle()
		time.AfterFunc(apns.PushTimeout+5*time.Second, old.client.CloseIdle)
	}
}

// reload re-reads the configuration file for the log settings and the
// credentials. Anything that fails keeps what works now.
func (d *Daemon) reload() {
	log := d.log.WithField("component", "daemon")
	cur := d.cfg.Load()
	if cur.File == "" {
		log.Info("SIGHUP: no configuration file to reload")
		return
	}
	next, warnings, err := config.Load(cur.File)
	if err != nil {
		log.WithError(err).Error("SIGHUP: configuration not reloaded; keeping the running one")
		return
	}
	for _, w := range warnings {
		log.Warn(w)
	}
	if keys := restartKeys(d.started, next); len(keys) > 0 {
		log.WithField("keys", strings.Join(keys, ", ")).
			Warn("reload: changed settings that take effect only after a restart (systemctl restart xapsd); the running values stay until then")
	}
	if err := logging.Configure(d.log, next.LogLevel, next.LogFormat); err != nil {
		log.WithError(err).Error("SIGHUP: log settings not changed")
	}
	cred, err := loadCredential(next, d.log.WithField("component", "apns"), time.Now(), d.clientEnv())
	if err != nil {
		// Keep the stamps of what is in use, so a broken file is not
		// retried every few seconds, only when it changes again.
		cur := *d.cred.Load()
		cur.stamps = stampFiles(cur.sources)
		if st := stampFiles(configuredPaths(credentialFiles(next))); len(st) > 0 {
			cur.stamps = st
		}
		d.cred.Store(&cur)
		log.WithError(err).Error("reload: credentials not reloaded; pushing with the previous ones")
		return
	}
	d.cfg.Store(next)
	switch {
	case cred == nil && d.apple != nil && d.apple.key == appleKey(next):
		// The Apple ID manager keeps running with what it has.
	case cred == nil:
		d.stopApple()
		if cred, err = d.startApple(next); err != nil {
			log.WithError(err).Error("reload: Apple ID certificate manager not started")
			cred = &credential{client: unavailableClient(err), err: err}
		}
		d.setCredential(cred)
		d.runApple()
	default:
		d.stopApple()
		d.setCredential(cred)
	}
	log.WithField("topic", d.cred.Load().client.Topic).Info("reload: configuration and credentials reloaded")
}

// shutdown stops accepting requests, lets the ones in flight finish
// (for shutdownDrainTimeout, then closes them), sends the delayed pushes
// now, waits for the pushes in flight (for shutdownTimeout, a budget of
// its own that a slow client cannot use up), keeps what could not be sent
// for the next start, and writes the registry.
func (d *Daemon) shutdown() error {
	cfg := d.cfg.Load()
	log := d.log.WithField("component", "daemon")
	log.Info("shutting down")
	drain, cancelDrain := context.WithTimeout(context.Background(), cfg.ShutdownDrainTimeout)
	defer cancelDrain()
	for _, srv := range d.servers {
		if err := srv.Shutdown(drain); err != nil {
			log.WithError(err).Warn("requests still running after shutdownDrainTimeout; closing their connections")
			srv.Close()
		}
	}
	if d.monitor != nil {
		if d.monitor.Shutdown(drain) != nil {
			d.monitor.Close()
		}
	}
	d.admin.Shutdown(drain)
	if n := d.sched.Flush(); n > 0 {
		log.WithField("pushes", n).Info("sending delayed pushes before exiting")
	}
	pushes, cancelPushes := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancelPushes()
	left, err := d.sender.Drain(pushes)
	if err != nil {
		log.WithError(err).Warn("not every push went out")
	}
	d.leftovers.stop()
	var errs []error
	if err := savePending(d.state.PendingPushes(), left); err != nil {
		errs = append(errs, err)
	} else if len(left) > 0 {
		log.WithField("pushes", len(left)).Info("kept unsent pushes for the next start")
	}
	if err := d.reg.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// databaseHost names the database of a databaseURL for the log, without
// user or password.
func databaseHost(url string) string {
	if rest, ok := strings.CutPrefix(url, "postgres://"); ok {
		url = rest
	} else if rest, ok := strings.CutPrefix(url, "postgresql://"); ok {
		url = rest
	} else {
		var host, db string
		for _, f := range strings.Fields(url) {
			if v, ok := strings.CutPrefix(f, "host="); ok {
				host = v
			}
			if v, ok := strings.CutPrefix(f, "dbname="); ok {
				db = v
			}
		}
		return host + "/" + db
	}
	if i := strings.LastIndex(url, "@"); i >= 0 {
		url = url[i+1:]
	}
	if i := strings.IndexByte(url, '?'); i >= 0 {
		url = url[:i]
	}
	return url
}
