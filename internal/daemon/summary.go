package daemon

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/applecerts"
	"github.com/xapsd/xapsd/internal/config"
	"github.com/xapsd/xapsd/internal/statedir"
)

// Summary is what xapsd runs with, in one line: the start-up log line and
// --check-config say the same, so an admin can compare the two.
type Summary struct {
	Credential string   // kind and file
	Topic      string   // what /register answers
	Expires    string   // RFC 3339, UTC
	APNs       string   // where pushes go
	Listen     []string // the plugin's listeners (and the TLS one)
	Registry   string   // databaseFile, or the PostgreSQL server and database
	DryRun     bool
}

// summarize describes cfg with the credential it loaded and the
// addresses it listens on (or would).
func summarize(cfg *config.Config, cred *credential, listen []string) Summary {
	s := Summary{Credential: credentialKind(cfg), Topic: "-", Expires: "-", Listen: listen,
		Registry: registryName(cfg), DryRun: cfg.DryRun()}
	if cred != nil {
		if cred.client != nil && cred.client.Topic != "" {
			s.Topic = cred.client.Topic
		}
		if !cred.notAfter.IsZero() {
			s.Expires = cred.notAfter.UTC().Format(time.RFC3339)
		}
	}
	if s.Expires == "-" && cfg.KeyFileP8 != "" && strings.HasPrefix(s.Credential, ".p8") {
		s.Expires = "never (a token credential)"
	}
	url, _ := cfg.APNsURL()
	switch {
	case cfg.DryRun():
		s.APNs = "dry-run: NOTHING IS SENT TO APPLE, each push is only logged"
	case cfg.APNsEndpoint == config.EndpointProduction || cfg.APNsEndpoint == config.EndpointDevelopment:
		s.APNs = cfg.APNsEndpoint + " " + url
	default:
		s.APNs = url
	}
	return s
}

// credentialKind names the kind of credential cfg configures and its file.
func credentialKind(cfg *config.Config) string {
	f := credentialFiles(cfg)
	switch {
	case f.P12 != "":
		return "PKCS#12 certificate " + f.P12
	case f.PEMCert != "":
		return "PEM certificate " + f.PEMCert
	case f.P8 != "":
		return fmt.Sprintf(".p8 auth key %s (key ID %s, team ID %s)", f.P8, f.KeyID, f.TeamID)
	case appleIDMode(cfg):
		return "Apple ID certificate " + applecerts.In(statedir.New(cfg.DatabaseFile).AppleCerts()).Mail()
	case cfg.DryRun():
		return "none (dryRunTopic)"
	}
	return "none"
}

// Message is the start-up line's text; dry-run says loudly that Apple
// gets nothing.
func (s Summary) Message() string {
	if s.DryRun {
		return "xapsd is running in DRY-RUN mode: pushes are logged, never sent to Apple"
	}
	return "xapsd is running"
}

// Fields are the start-up line's fields.
func (s Summary) Fields() logrus.Fields {
	return logrus.Fields{"credential": s.Credential, "topic": s.Topic, "expires": s.Expires,
		"apns": s.APNs, "listen": strings.Join(s.Listen, " "), "registry": s.Registry}
}

// String is the fields as the text log writes them: key=value in key
// order, quoted where the value has more than plain characters.
func (s Summary) String() string {
	f := s.Fields()
	names := make([]string, 0, len(f))
	for k := range f {
		names = append(names, k)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, k := range names {
		v := fmt.Sprint(f[k])
		if needsQuote(v) {
			v = strconv.Quote(v)
		}
		parts[i] = k + "=" + v
	}
	return strings.Join(parts, " ")
}

// needsQuote follows logrus's text formatter.
func needsQuote(v string) bool {
	if v == "" {
		return true
	}
	for _, r := range v {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-._/@^+", r)) {
			return true
		}
	}
	return false
}

// logSummary writes the start-up line.
func (d *Daemon) logSummary(cfg *config.Config) {
	// The TLS listener, when there is one, is the last (listen).
	plain := len(d.listeners)
	if cfg.TLSEnabled() {
		plain--
	}
	var listen []string
	for i, ln := range d.listeners {
		a := ln.Addr().String()
		if i >= plain {
			a = "tls:" + a
		}
		listen = append(listen, a)
	}
	s := summarize(cfg, d.cred.Load(), listen)
	l := d.log.WithField("component", "daemon").WithFields(s.Fields())
	if s.DryRun {
		l.Warn(s.Message())
		return
	}
	l.Info(s.Message())
}

// registryName is where the registrations live, for log lines: the file,
// or "PostgreSQL host:port/database" (never the password).
func registryName(cfg *config.Config) string {
	if cfg.DatabaseURL != "" {
		return "PostgreSQL " + databaseHost(cfg.DatabaseURL)
	}
	return cfg.DatabaseFile
}
