package daemon

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/sideshow/apns2"
	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/apns"
	"github.com/xapsd/xapsd/internal/applecerts"
	"github.com/xapsd/xapsd/internal/appleid"
	"github.com/xapsd/xapsd/internal/config"
	"github.com/xapsd/xapsd/internal/creds"
	"github.com/xapsd/xapsd/internal/logging"
	"github.com/xapsd/xapsd/internal/statedir"
)

// errNoCredential explains what to configure; /register shows it as 503.
var errNoCredential = errors.New("no push credential configured: set certificateFilePem and " +
	"certificateFilePemKey, or certificateFileP12, or keyFileP8 with keyFileKeyId, keyFileTeamId and keyFileTopic " +
	"(or apnsEndpoint: dry-run to try xapsd without Apple); see docs/credentials.md")

// errWaitingForApple is the fallback reason while the Apple ID manager
// has no certificate yet.
var errWaitingForApple = errors.New("no Apple push certificate yet")

func credentialFiles(c *config.Config) creds.Files {
	return creds.Files{
		P12:         c.CertificateFileP12,
		P12Password: c.CertificateFileP12Password,
		PEMCert:     c.CertificateFilePem,
		PEMKey:      c.CertificateFilePemKey,
		P8:          c.KeyFileP8,
		KeyID:       c.KeyFileKeyID,
		TeamID:      c.KeyFileTeamID,
		Topic:       c.KeyFileTopic,
	}
}

// credential is what the daemon pushes with, or why it cannot.
type credential struct {
	client   *apns.Client
	err      error        // a lasting reason why devices cannot register
	live     func() error // a reason that can change by itself (Apple ID manager)
	notAfter time.Time    // certificate expiry, zero for tokens and dry-run
	sources  []string
	stamps   []fileStamp // of sources at load, to notice files replaced on disk
}

// problem says why xapsd cannot register devices now, or nil.
func (c *credential) problem(now time.Time) error {
	if c.live != nil {
		if err := c.live(); err != nil {
			return err
		}
	}
	if c.err != nil {
		return c.err
	}
	if !c.notAfter.IsZero() && !now.Before(c.notAfter) && len(c.sources) > 0 {
		return creds.ExpiredError(c.sources[0], c.notAfter)
	}
	return nil
}

// appleIDMode reports whether the Apple ID manager provides the
// credential: an Apple ID is configured and no credential file is, and
// pushes really go to Apple.
func appleIDMode(c *config.Config) bool {
	return c.AppleID != "" && !credentialFiles(c).Configured() && !c.DryRun()
}

// clientEnv is what a new push client takes from the running daemon.
type clientEnv struct {
	// prev is the client the new one replaces: its provider token is kept
	// when the .p8 key, key id and team are the same, because APNs counts
	// every new token and refuses more than one per 20 minutes.
	prev *apns.Client
	// onConnect sees every attempt to connect to APNs.
	onConnect func(error)
	// roots, when set, is what the connections to APNs trust instead of
	// the system's roots (Options.APNsRoots).
	roots *x509.CertPool
}

// loadCredential builds the push client from credential files, dry-run,
// or nothing. A configured file that does not load is an error; no
// credential at all is not (the daemon runs and says why it cannot
// register devices). In Apple ID mode it returns nil: the manager, which
// needs the registry's state folder, provides the credential later.
func loadCredential(c *config.Config, log logrus.FieldLogger, now time.Time, env clientEnv) (*credential, error) {
	files := credentialFiles(c)
	switch {
	case appleIDMode(c):
		return nil, nil
	case !files.Configured() && c.DryRun():
		return &credential{client: apns.NewDryRunClient(c.DryRunTopic, log)}, nil
	case !files.Configured():
		return &credential{client: unavailableClient(errNoCredential), err: errNoCredential}, nil
	}
	cred, err := creds.Load(files, now)
	if err != nil {
		return nil, err
	}
	for _, w := range cred.Warnings {
		log.Warn(w)
	}
	return clientFor(c, cred, log, env)
}

// clientFor binds a loaded credential to the configured endpoint. A
// certificate Apple marked for the other APNs environment only is
// refused here, so that a wrong file picked up by a reload leaves the
// working one in use.
func clientFor(c *config.Config, cred *creds.Credential, log logrus.FieldLogger, env clientEnv) (*credential, error) {
	out := &credential{notAfter: cred.NotAfter, sources: cred.Sources, stamps: stampFiles(cred.Sources)}
	if c.DryRun() {
		out.client = apns.NewDryRunClient(cred.Topic, log)
		return out, nil
	}
	url, err := c.APNsURL()
	if err != nil {
		return nil, err
	}
	if err := cred.CheckEnvironment(strings.ToLower(c.APNsEndpoint)); err != nil {
		return nil, err
	}
	opts := apns.ClientOptions{URL: url, Roots: env.roots, OnConnect: env.onConnect,
		Connections: c.APNsMaxConnections, ExtraIdleTimeout: config.APNsExtraConnectionIdle}
	switch cred.Mode {
	case creds.ModeToken:
		tok := apns.NewToken(cred.Token)
		if env.prev != nil && env.prev.Token().Same(cred.Token) {
			tok = env.prev.Token()
		}
		out.client = apns.NewTokenClient(tok, cred.Topic, opts)
	default:
		out.client = apns.NewCertificateClient(*cred.Certificate, cred.Topic, opts)
	}
	return out, nil
}

// unavailableClient fails every push as a temporary error, so pushes for
// devices registered earlier wait (with backoff) for a credential to be
// configured and reloaded instead of being dropped.
func unavailableClient(err error) *apns.Client {
	return &apns.Client{Transport: failingTransport{err}}
}

type failingTransport struct{ err error }

func (f failingTransport) PushWithContext(apns2.Context, *apns2.Notification) (*apns2.Response, error) {
	return nil, fmt.Errorf("push not sent: %w", f.err)
}

// appleManager is a running Apple ID certificate manager.
type appleManager struct {
	m      *appleid.Manager
	key    string             // the settings it was built from
	cancel context.CancelFunc // set by runApple
	done   chan struct{}      // closed when its loop has returned
}

func appleKey(c *config.Config) string {
	return fmt.Sprintf("%q %q %q %q %q", c.AppleID, c.AppleIDHashedPassword, c.AppleIDVendorCertificate, c.AppleIDVendorKey, c.DatabaseFile)
}

// newAppleManager builds the Apple ID manager; exclusive (nil for a check)
// keeps daemons that share a registry from asking Apple at the same time.
func newAppleManager(c *config.Config, log logrus.FieldLogger,
	exclusive func(context.Context, func() error) (bool, error)) (*appleid.Manager, error) {
	return appleid.New(appleid.Options{
		AppleID:        c.AppleID,
		PasswordHash:   c.AppleIDHashedPassword,
		VendorCertFile: c.AppleIDVendorCertificate,
		VendorKeyFile:  c.AppleIDVendorKey,
		Dir:            statedir.New(c.DatabaseFile).AppleCerts(),
		Log:            log,
		Exclusive:      exclusive,
	})
}

// startApple runs the Apple ID manager and returns the credential to use
// until it obtains a (new) certificate.
func (d *Daemon) startApple(c *config.Config) (*credential, error) {
	log := d.log.WithField("component", "appleid")
	m, err := newAppleManager(c, log, func(ctx context.Context, work func() error) (bool, error) {
		return d.reg.Exclusive(ctx, "apple-id-certificate", work)
	})
	if err != nil {
		return nil, err
	}
	cred := &credential{client: unavailableClient(errWaitingForApple), err: errWaitingForApple, live: m.Status}
	if stored, err := m.Stored(); err == nil {
		for _, w := range stored.Warnings {
			log.Warn(w)
		}
		if cred, err = clientFor(c, stored, log, d.clientEnv()); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, appleid.ErrNotStored) {
		log.WithError(err).Error("the stored Apple push certificate is not usable")
	}
	d.apple = &appleManager{m: m, key: appleKey(c)}
	return cred, nil
}

// runApple starts the Apple ID manager's loop; the sender must exist, as
// a new certificate goes straight to it.
func (d *Daemon) runApple() {
	am := d.apple
	if am == nil || am.done != nil {
		return
	}
	log := d.log.WithField("component", "appleid")
	ctx, cancel := context.WithCancel(context.Background())
	am.cancel, am.done = cancel, make(chan struct{})
	go func() {
		defer close(am.done)
		am.m.Run(ctx, func(nc *creds.Credential) {
			cur := d.cfg.Load()
			next, err := clientFor(cur, nc, log, d.clientEnv())
			if err != nil {
				log.WithError(err).Error("new Apple push certificate not used")
				return
			}
			d.setCredential(next)
			log.WithFields(logrus.Fields{"topic": nc.Topic, "expires": nc.NotAfter.UTC().Format(time.RFC3339)}).
				Info("using the new Apple push certificate")
		})
	}()
}

func (d *Daemon) stopApple() {
	if d.apple == nil {
		return
	}
	if d.apple.done != nil {
		d.apple.cancel()
		<-d.apple.done
	}
	d.apple = nil
}

// importLegacyCerts keeps an old install's Apple certificates: the old
// database.json held them (docs/protocol.md#legacy-applecerts) and the migration keeps them only
// in its backup.
func (d *Daemon) importLegacyCerts(c *config.Config) {
	log := d.log.WithField("component", "appleid")
	var raw json.RawMessage
	if d.files != nil {
		raw = d.files.LegacyAppleCerts()
	}
	state := statedir.New(c.DatabaseFile)
	dir := state.AppleCerts()
	if raw == nil {
		// A start that migrated but failed to import: the backup still
		// has them.
		if _, err := os.Stat(applecerts.In(dir).Mail()); err == nil || c.AppleID == "" {
			return
		}
		backups := state.LegacyBackups()
		if len(backups) == 0 {
			return
		}
		raw = legacyCertsFromBackup(backups[len(backups)-1])
		if raw == nil {
			return
		}
	}
	res, err := applecerts.ImportLegacy(raw, dir, time.Now())
	for _, n := range res.Notes {
		log.Warn(n)
	}
	if err != nil {
		log.WithError(err).Error("certificates of the old database.json not imported; they are still in its .legacy-*.bak backup")
		return
	}
	if len(res.Stored) > 0 {
		log.WithField("stored", res.Stored).Info("imported the old xapsd's Apple push certificates")
	}
}

// checkCredential loads the configured credential, and the plugin's
// shared secret, as a start would, for --check-config (Check). It returns
// an error for what would stop the start, notes for what would only keep
// devices from registering (a credential that does not load among them),
// and the credential for the summary.
func checkCredential(c *config.Config) (notes []string, cred *credential, err error) {
	if c.PluginSecretFile != "" {
		if _, err := loadPluginSecret(c.PluginSecretFile); err != nil {
			return nil, nil, err
		}
	}
	log := quietLogger().WithField("component", "check")
	if appleIDMode(c) {
		m, err := newAppleManager(c, log, nil)
		if err != nil {
			return nil, nil, err
		}
		cred = &credential{client: unavailableClient(errWaitingForApple), err: errWaitingForApple}
		stored, err := m.Stored()
		switch {
		case err == nil:
			notes = append(notes, stored.Warnings...)
			if cred, err = clientFor(c, stored, log, clientEnv{}); err != nil {
				return nil, nil, err
			}
		case !errors.Is(err, appleid.ErrNotStored):
			return nil, nil, err
		}
		if err := m.Status(); err != nil {
			notes = append(notes, "devices cannot register yet: "+err.Error())
		}
		return notes, cred, nil
	}
	// A credential that does not load does not stop the start (the daemon
	// runs degraded: brokenCredential), so here it is a note, not an
	// error: --check-config in ExecReload must not refuse a reload that
	// fixes something else.
	if files := credentialFiles(c); files.Configured() {
		loaded, err := creds.Load(files, time.Now())
		if err == nil {
			notes = append(notes, loaded.Warnings...)
			if loaded.ExpiryWarning != "" {
				notes = append(notes, loaded.ExpiryWarning)
			}
			cred, err = clientFor(c, loaded, log, clientEnv{})
		}
		if err != nil {
			cred = brokenCredential(c, err)
		}
	} else if cred, err = loadCredential(c, log, time.Now(), clientEnv{}); err != nil {
		cred = brokenCredential(c, err)
	}
	if err := cred.problem(time.Now()); err != nil {
		notes = append(notes, "devices cannot register until this is fixed: "+err.Error())
	}
	return notes, cred, nil
}

func quietLogger() *logrus.Logger { return logging.Discard() }

// fileStamp notices a credential file replaced or rewritten on disk.
type fileStamp struct {
	path    string
	size    int64
	modTime time.Time
}

func stampFiles(paths []string) []fileStamp {
	out := make([]fileStamp, 0, len(paths))
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			out = append(out, fileStamp{path: p})
			continue
		}
		out = append(out, fileStamp{path: p, size: st.Size(), modTime: st.ModTime()})
	}
	return out
}

func filesChanged(old []fileStamp) bool {
	for _, s := range old {
		st, err := os.Stat(s.path)
		if err != nil {
			// A file being replaced may be missing for a moment; the
			// next check sees the new one.
			continue
		}
		if st.Size() != s.size || !st.ModTime().Equal(s.modTime) {
			return true
		}
	}
	return false
}

// legacyCertsFromBackup reads the AppleCerts object of an old
// database.json backup, or nil.
func legacyCertsFromBackup(path string) json.RawMessage {
	data, err := statedir.ReadFile(path, 0)
	if err != nil {
		return nil
	}
	var f struct {
		AppleCerts json.RawMessage `json:"AppleCerts"`
	}
	if json.Unmarshal(data, &f) != nil {
		return nil
	}
	return f.AppleCerts
}

// configuredPaths lists the credential files named in f.
func configuredPaths(f creds.Files) []string {
	var out []string
	for _, p := range []string{f.P12, f.PEMCert, f.PEMKey, f.P8} {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}

// clientEnv hands a new push client the current one and the connection
// hook.
func (d *Daemon) clientEnv() clientEnv {
	env := clientEnv{onConnect: d.observeConnect, roots: d.apnsRoots}
	if c := d.cred.Load(); c != nil {
		env.prev = c.client
	}
	return env
}

// observeConnect counts connection attempts to APNs. The metrics exist
// before the first push, which is what makes the first connection.
func (d *Daemon) observeConnect(err error) {
	if d.metrics != nil {
		d.metrics.ObserveConnect(err)
	}
	l := d.log.WithField("component", "apns")
	if err != nil {
		l.WithError(err).Debug("connecting to APNs failed")
	} else {
		l.Debug("connected to APNs")
	}
}
