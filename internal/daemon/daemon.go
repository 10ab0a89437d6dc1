// Package daemon wires xapsd together and runs it: it builds each part
// from the configuration, serves the plugin API, reloads credentials and
// log settings on SIGHUP, and shuts down in order so that nothing
// acknowledged is lost.
package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/apns"
	"github.com/xapsd/xapsd/internal/appleid"
	"github.com/xapsd/xapsd/internal/config"
	"github.com/xapsd/xapsd/internal/ctl"
	"github.com/xapsd/xapsd/internal/logging"
	"github.com/xapsd/xapsd/internal/metrics"
	"github.com/xapsd/xapsd/internal/notify"
	"github.com/xapsd/xapsd/internal/pluginapi"
	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/scheduler"
)

// Daemon is one running xapsd.
type Daemon struct {
	log    *logrus.Logger
	cfg    atomic.Pointer[config.Config]
	cred   atomic.Pointer[credential]
	reg    *registry.Registry
	sender *apns.Sender
	sched  *scheduler.Scheduler

	servers   []*http.Server
	listeners []net.Listener
	metrics   *metrics.Metrics
	monitor   *metrics.Server
	admin     *ctl.Server
	apple     *appleManager // nil unless the Apple ID manager provides the credential
	expiry    appleid.ExpiryWatch
	started   *config.Config // what the listeners, registry and queue were built from
}

// Options are what main hands over.
type Options struct {
	Config *config.Config
	Log    *logrus.Logger
	// Reload receives a value for each SIGHUP.
	Reload <-chan struct{}
	// Ready, if set, is called with the plugin API address once it listens.
	Ready func(addr string)
}

// Run starts xapsd and blocks until ctx ends, then shuts down. An error
// before listening (unreadable registry, port in use) is returned at once
// so the process exits non-zero; a credential that does not load is not
// such an error (brokenCredential).
func Run(ctx context.Context, o Options) error {
	d := &Daemon{log: o.Log, started: o.Config}
	cfg := o.Config
	d.cfg.Store(cfg)
	log := o.Log.WithField("component", "daemon")

	// A credential that does not load does not stop the start: the daemon
	// runs without one and says why (brokenCredential).
	cred, err := loadCredential(cfg, o.Log.WithField("component", "apns"), time.Now())
	if err != nil {
		cred = brokenCredential(cfg, err)
	}

	// Gauges read these at scrape time; they are set before the listener
	// starts serving.
	var src metrics.Sources
	d.metrics = metrics.New(metrics.Sources{
		QueueDepth:       func() (int, int) { return src.QueueDepth() },
		Registrations:    func() (int, int) { return src.Registrations() },
		DelayedPending:   func() int { return src.DelayedPending() },
		CredentialExpiry: func() time.Time { return d.cred.Load().notAfter },
	})

	start := time.Now()
	d.reg, err = registry.Open(registry.Options{
		OnSync:        d.metrics.ObserveSync,
		Path:          cfg.DatabaseFile,
		TTL:           cfg.RegistrationTTL,
		MaxPerAccount: cfg.MaxDevicesPerAccount,
		CompactAfter:  cfg.RegistryCompactAfter,
		Log:           o.Log.WithField("component", "registry"),
	})
	if err != nil {
		return err
	}
	d.importLegacyCerts(cfg)
	if cred == nil {
		if cred, err = d.startApple(cfg); err != nil {
			cred = brokenCredential(cfg, err)
		}
	}
	d.cred.Store(cred)
	if err := cred.problem(time.Now()); err != nil {
		log.WithError(err).Error("xapsd cannot register devices until this is fixed")
	}
	d.checkExpiry()
	// Loading leaves garbage; give it back to the system now rather than
	// whenever the scavenger gets to it.
	debug.FreeOSMemory()
	users, regs := d.reg.Stats()
	log.WithFields(logrus.Fields{"file": cfg.DatabaseFile, "users": users, "registrations": regs,
		"ms": time.Since(start).Milliseconds()}).Info("registry loaded")

	d.sender = apns.New(cred.client, apns.Options{
		Concurrency: cfg.APNsConcurrency,
		Expiration:  cfg.APNsExpiration,
		Priority:    cfg.APNsPriority,
		Remover:     d.reg,
		Log:         o.Log.WithField("component", "apns"),
		OnResult: func(r apns.Result) {
			d.metrics.ObservePush(string(r.Outcome), r.Status, r.Reason, r.Duration)
		},
	})
	d.sched = scheduler.New(scheduler.Options{Delay: cfg.Delay, Interval: cfg.CheckInterval, Sender: d.sender})
	d.runApple()
	src = metrics.Sources{QueueDepth: d.sender.Depth, Registrations: d.reg.Stats, DelayedPending: d.sched.Len}
	svc := &notify.Service{Registry: d.reg, Scheduler: d.sched, Sender: d.sender,
		InboxOnly: strings.EqualFold(cfg.PushMailboxes, "inbox")}
	handler := pluginapi.NewHandler(pluginapi.Options{
		Registrar: d.reg,
		Notifier:  svc,
		Topic:     d.topic,
		Health:    d.ready,
		Log:       o.Log.WithField("component", "pluginapi"),
		Observe:   d.metrics.ObserveRequest,
	})

	if err := d.listen(cfg, handler); err != nil {
		d.reg.Close()
		return err
	}
	d.admin, err = ctl.Listen(ctl.SocketPath(cfg.DatabaseFile), d.reg, d.sender)
	if err != nil {
		for _, ln := range d.listeners {
			ln.Close()
		}
		d.reg.Close()
		return err
	}
	if cfg.MetricsEnabled() {
		d.monitor, err = metrics.Listen(cfg.MetricsListenAddr, d.metrics, metrics.Checks{Ready: d.ready})
		if err != nil {
			for _, ln := range d.listeners {
				ln.Close()
			}
			d.admin.Shutdown(context.Background())
			d.reg.Close()
			return fmt.Errorf("listen on %s (metricsListenAddr): %w", cfg.MetricsListenAddr, err)
		}
	}

	pendingPath := pendingFile(cfg.DatabaseFile)
	if keys, err := loadPending(pendingPath); err != nil {
		log.WithError(err).Warn("cannot read the pushes left over from the last shutdown")
	} else if len(keys) > 0 {
		for _, k := range keys {
			d.sender.Enqueue(k)
		}
		log.WithField("pushes", len(keys)).Info("sending pushes left over from the last shutdown")
	}

	// Background work stops when work is cancelled, after the drain.
	work, stopWork := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	goRun := func(f func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); f(work) }()
	}
	goRun(d.sender.Run)
	goRun(d.sched.Run)
	fileReload := make(chan struct{}, 1)
	goRun(func(ctx context.Context) { d.housekeeping(ctx, fileReload) })
	for i, srv := range d.servers {
		srv, ln := srv, d.listeners[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if srv.TLSConfig != nil {
				err = srv.ServeTLS(ln, "", "")
			} else {
				err = srv.Serve(ln)
			}
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.WithError(err).Error("listener failed")
			}
		}()
	}
	for _, ln := range d.listeners {
		log.WithField("addr", ln.Addr().String()).Info("listening for the Dovecot plugin")
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := d.admin.Serve(); err != nil {
			log.WithError(err).Error("admin socket failed")
		}
	}()
	if d.monitor != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.monitor.Serve(); err != nil {
				log.WithError(err).Error("monitoring listener failed")
			}
		}()
		log.WithField("addr", d.monitor.Addr()).Info("serving /metrics, /healthz and /readyz")
	}
	d.logSummary(cfg)
	if o.Ready != nil {
		o.Ready(d.listeners[0].Addr().String())
	}

	for {
		select {
		case <-o.Reload:
			d.reload()
			continue
		case <-fileReload:
			d.reload()
			continue
		case <-ctx.Done():
		}
		break
	}

	err = d.shutdown(pendingPath)
	d.stopApple()
	stopWork()
	wg.Wait()
	return err
}

// listen binds every listener before anything is served, so a port in use
// fails the start instead of leaving a half-running daemon.
func (d *Daemon) listen(cfg *config.Config, h http.Handler) error {
	newServer := func() *http.Server {
		return &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       30 * time.Second,
			// Each Dovecot process keeps its connection for a long time.
			IdleTimeout:    10 * time.Minute,
			MaxHeaderBytes: 64 << 10,
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
	for _, ln := range lns {
		d.servers = append(d.servers, newServer())
		d.listeners = append(d.listeners, ln)
	}
	if cfg.TLSEnabled() {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			closePlain()
			return fmt.Errorf("load tlsCertfile %s / tlsKeyfile %s: %w", cfg.TLSCertFile, cfg.TLSKeyFile, err)
		}
		tln, err := net.Listen("tcp", cfg.TLSListenAddress())
		if err != nil {
			closePlain()
			return fmt.Errorf("listen on %s (tlsListenAddr/tlsPort): %w", cfg.TLSListenAddress(), err)
		}
		srv := newServer()
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
			NextProtos: []string{"h2", "http/1.1"}}
		d.servers = append(d.servers, srv)
		d.listeners = append(d.listeners, tln)
	}
	return nil
}

func (d *Daemon) topic() (string, error) {
	c := d.cred.Load()
	if err := c.problem(time.Now()); err != nil {
		return "", err
	}
	return c.client.Topic, nil
}

// ready says why xapsd cannot do its job right now, or nil: a usable
// push credential and a registry it can write to.
func (d *Daemon) ready() error {
	if err := d.cred.Load().problem(time.Now()); err != nil {
		return err
	}
	if err := d.reg.Writable(); err != nil {
		return fmt.Errorf("registry not writable: %w", err)
	}
	return nil
}

// housekeeping expires old registrations hourly, and every few seconds
// warns about certificates close to expiry and notices credential files
// replaced on disk (which reload like SIGHUP). A stat of two files is
// cheap; an admin who just copied a renewed certificate in wants it used.
func (d *Daemon) housekeeping(ctx context.Context, reload chan<- struct{}) {
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
				if n := d.reg.Expire(now); n > 0 {
					d.log.WithField("component", "registry").WithField("removed", n).Info("removed registrations not refreshed within registrationTTL")
				}
			}
			d.checkExpiry()
			if c := d.cred.Load(); len(c.stamps) > 0 && filesChanged(c.stamps) {
				d.log.WithField("component", "daemon").WithField("files", c.sources).Info("credential files changed on disk: reloading")
				select {
				case reload <- struct{}{}:
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
	if appleid.ExpiryStage(c.notAfter, now) < 0 {
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
	cred, err := loadCredential(next, d.log.WithField("component", "apns"), time.Now())
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

// shutdown stops accepting requests, lets the ones in flight finish,
// sends the delayed pushes now, waits for the pushes in flight, keeps what
// could not be sent for the next start, and writes the registry.
func (d *Daemon) shutdown(pendingPath string) error {
	cfg := d.cfg.Load()
	log := d.log.WithField("component", "daemon")
	log.Info("shutting down")
	ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	for _, srv := range d.servers {
		if err := srv.Shutdown(ctx); err != nil {
			log.WithError(err).Warn("requests still running when the grace period ended")
		}
	}
	if d.monitor != nil {
		d.monitor.Shutdown(ctx)
	}
	d.admin.Shutdown(ctx)
	if n := d.sched.Flush(); n > 0 {
		log.WithField("pushes", n).Info("sending delayed pushes before exiting")
	}
	left, err := d.sender.Drain(ctx)
	if err != nil {
		log.WithError(err).Warn("not every push went out")
	}
	var errs []error
	if err := savePending(pendingPath, left); err != nil {
		errs = append(errs, err)
	} else if len(left) > 0 {
		log.WithField("pushes", len(left)).Info("kept unsent pushes for the next start")
	}
	if err := d.reg.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func pendingFile(db string) string {
	return filepath.Join(filepath.Dir(db), "pending-pushes.json")
}
