package daemon

import (
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/apns"
	"github.com/xapsd/xapsd/internal/config"
	"github.com/xapsd/xapsd/internal/connlimit"
	"github.com/xapsd/xapsd/internal/filestore"
	"github.com/xapsd/xapsd/internal/history"
	"github.com/xapsd/xapsd/internal/metrics"
	"github.com/xapsd/xapsd/internal/notify"
	"github.com/xapsd/xapsd/internal/pgstore"
	"github.com/xapsd/xapsd/internal/pluginapi"
	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/scheduler"
)

// The parts build makes, one step each, in the order they need each
// other.

// pluginSecret reads pluginSecretFile, or warns about a plugin API that
// others than this machine reach without one.
func (d *Daemon) pluginSecret(cfg *config.Config) ([]byte, error) {
	if cfg.PluginSecretFile != "" {
		return loadPluginSecret(cfg.PluginSecretFile)
	}
	if exposed := cfg.Exposed(); len(exposed) > 0 {
		d.log.WithField("component", "daemon").WithField("keys", exposed).
			Warn("the plugin API listens beyond this machine without a secret (allowUnauthenticated: true); anyone who reaches it can register devices for any user")
	}
	return nil, nil
}

// openRegistry makes the state folder and opens the registry on its
// store, the files or PostgreSQL, with the configuration's values.
func (d *Daemon) openRegistry(cfg *config.Config) error {
	start := time.Now()
	regLog := d.log.WithField("component", "registry")
	var store registry.Store
	if cfg.DatabaseURL != "" {
		store = pgstore.New(pgstore.Options{
			DatabaseURL:           cfg.DatabaseURL,
			DatabasePasswordFile:  cfg.DatabasePasswordFile,
			DatabaseWaitLoad:      config.DatabaseWaitLoad,
			DatabaseCommitTimeout: config.DatabaseCommitTimeout,
			MaxDevicesPerAccount:  cfg.MaxDevicesPerAccount,
			MaxDevicesPerUser:     config.MaxDevicesPerUser,
			RegistryCheckInterval: config.RegistryCheckInterval,
			Log:                   regLog,
		})
	} else {
		d.files = filestore.New(filestore.Options{
			Dir:                       d.state,
			RegistryCompactAfter:      cfg.RegistryCompactAfter,
			RegistryCompactAfterBytes: config.RegistryCompactAfterBytes,
			RegistryCheckInterval:     config.RegistryCheckInterval,
			Log:                       regLog,
		})
		store = d.files
	}
	// The state folder holds the admin socket and the pending pushes
	// whichever registry runs, and the registry's files with the files.
	if err := d.state.Make(d.log.WithField("component", "daemon")); err != nil {
		return err
	}
	reg, err := registry.Open(store, registry.Options{
		RegistrationTTL:      cfg.RegistrationTTL,
		MaxDevicesPerAccount: cfg.MaxDevicesPerAccount,
		MaxDevicesPerUser:    config.MaxDevicesPerUser,
		MaxRegistrations:     cfg.MaxRegistrations,
		RegistrationRefresh:  config.RegistrationRefresh,
		Log:                  regLog,
		OnSync:               d.metrics.ObserveSync,
	})
	if err != nil {
		return err
	}
	d.reg = reg
	// Loading leaves garbage; give it back to the system now rather than
	// whenever the scavenger gets to it.
	debug.FreeOSMemory()
	users, regs := reg.Stats()
	d.log.WithField("component", "daemon").WithFields(logrus.Fields{"registry": registryName(cfg), "users": users,
		"registrations": regs, "ms": time.Since(start).Milliseconds()}).Info("registry loaded")
	return nil
}

// useCredential settles what the daemon pushes with: the credential
// loaded from files, or, in Apple ID mode, what the Apple ID manager
// holds (after importing an old install's certificates).
func (d *Daemon) useCredential(cfg *config.Config, cred *credential) {
	d.importLegacyCerts(cfg)
	if cred == nil {
		var err error
		if cred, err = d.startApple(cfg); err != nil {
			cred = brokenCredential(cfg, err)
		}
	}
	d.cred.Store(cred)
	if err := cred.problem(time.Now()); err != nil {
		d.log.WithField("component", "daemon").WithError(err).Error("xapsd cannot register devices until this is fixed")
	}
	d.checkExpiry()
}

// buildPushing makes the history xapsd diagnose reads, the push queue and
// the scheduler that debounces changes that are not new mail.
func (d *Daemon) buildPushing(cfg *config.Config) {
	d.history = history.New(history.Options{})
	d.sender = apns.New(d.cred.Load().client, apns.Options{
		Concurrency:      cfg.APNsConcurrency,
		Expiration:       cfg.APNsExpiration,
		Priority:         cfg.APNsPriority,
		MinInterval:      cfg.APNsMinInterval,
		MinBackoff:       config.APNsMinBackoff,
		MaxBackoff:       config.APNsMaxBackoff,
		ProbeInterval:    config.APNsProbeInterval,
		TrustAfterChange: config.APNsTrustAfterChange,
		Remover:          d.reg,
		Log:              d.log.WithField("component", "apns"),
		OnResult:         d.pushed,
	})
	d.sched = scheduler.New(scheduler.Options{Delay: cfg.Delay, CheckInterval: cfg.CheckInterval, Sender: d.sender})
}

// pushed records what became of a push: metrics, the history, and the
// pushes left over from the last shutdown.
func (d *Daemon) pushed(r apns.Result) {
	d.metrics.ObservePush(string(r.Outcome), r.Status, r.Reason, r.Duration)
	d.history.Pushed(r.Device.User, r.Device.AccountID, r.Device.DeviceToken, string(r.Outcome), r.Status, r.Reason)
	if r.Outcome != apns.Retrying {
		d.leftovers.done(r.Device)
	}
}

// gauges are what /metrics reads of the parts at each scrape; they exist
// by now.
func (d *Daemon) gauges(cfg *config.Config) metrics.Sources {
	src := metrics.Sources{
		QueueDepth:       d.sender.Depth,
		Registrations:    d.reg.Stats,
		DelayedPending:   d.sched.Len,
		CredentialExpiry: func() time.Time { return d.cred.Load().notAfter },
		RegistryDamage:   func() int { return d.reg.Health().Damaged },
		RegistryWritable: func() bool { return d.reg.Health().WriteErr == nil },
		Connections:      d.conns.Open,
		APNsConnections:  func() int { return d.cred.Load().client.OpenConnections() },
		SendingPaused:    func() string { cause, _ := d.sender.Paused(); return cause },
	}
	if cfg.DatabaseURL != "" {
		src.RegistryFollowing = func() bool { return d.reg.Health().FollowErr == nil }
	}
	return src
}

// pluginHandler is the plugin API on the registry, the scheduler and the
// push queue.
func (d *Daemon) pluginHandler(cfg *config.Config, secret []byte) http.Handler {
	svc := &notify.Service{Registry: d.reg, Scheduler: d.sched, Sender: d.sender, History: d.history,
		InboxOnly: strings.EqualFold(cfg.PushMailboxes, "inbox")}
	return pluginapi.NewHandler(pluginapi.Options{
		Registrar: d.reg,
		Notifier:  svc,
		Topic:     d.topic,
		Health:    d.readyPublic,
		Log:       d.log.WithField("component", "pluginapi"),
		Observe:   d.metrics.ObserveRequest,
		Secret:    secret,
		// The secret's holder (or, without a secret, any client that
		// sends a request) keeps its connection over ones that did not.
		Authenticated: connlimit.Trust,
	})
}

// sendLeftovers queues the pushes the last shutdown could not send.
func (d *Daemon) sendLeftovers() {
	log := d.log.WithField("component", "daemon")
	path := d.state.PendingPushes()
	keys, err := loadPending(path)
	if err != nil {
		log.WithError(err).Warn("cannot read the pushes left over from the last shutdown")
		return
	}
	if len(keys) == 0 {
		return
	}
	d.leftovers.track(path, keys, log)
	for _, k := range keys {
		d.sender.Enqueue(k)
	}
	log.WithField("pushes", len(keys)).Info("sending pushes left over from the last shutdown")
}
