package daemon

import (
	"errors"
	"fmt"
	"time"

	"github.com/sideshow/apns2"
	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/apns"
	"github.com/xapsd/xapsd/internal/config"
	"github.com/xapsd/xapsd/internal/creds"
)

// errNoCredential explains what to configure; /register shows it as 503.
var errNoCredential = errors.New("no push credential configured: set certificateFilePem and " +
	"certificateFilePemKey, or certificateFileP12, or keyFileP8 with keyFileKeyId, keyFileTeamId and keyFileTopic " +
	"(or apnsEndpoint: dry-run to try xapsd without Apple)")

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
	err      error     // non-nil: no usable credential, /register answers 503
	notAfter time.Time // certificate expiry, zero for tokens and dry-run
	sources  []string
}

// loadCredential builds the push client the configuration asks for. A
// configured credential that does not load is an error; no credential at
// all is not (the daemon runs and says why it cannot register devices),
// unless the admin asked for dry-run, which needs none.
func loadCredential(c *config.Config, log logrus.FieldLogger, now time.Time) (*credential, error) {
	files := credentialFiles(c)
	if !files.Configured() {
		if c.DryRun() {
			return &credential{client: apns.NewDryRunClient(c.DryRunTopic, log)}, nil
		}
		return &credential{client: unavailableClient(errNoCredential), err: errNoCredential}, nil
	}
	cred, err := creds.Load(files, now)
	if err != nil {
		return nil, err
	}
	for _, w := range cred.Warnings {
		log.Warn(w)
	}
	out := &credential{notAfter: cred.NotAfter, sources: cred.Sources}
	if c.DryRun() {
		out.client = apns.NewDryRunClient(cred.Topic, log)
		return out, nil
	}
	url, err := c.APNsURL()
	if err != nil {
		return nil, err
	}
	opts := apns.ClientOptions{URL: url}
	switch cred.Mode {
	case creds.ModeToken:
		out.client = apns.NewTokenClient(cred.Token, cred.Topic, opts)
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

// CheckCredential loads the configured credential as a start would, for
// --check-config. No credential at all is only a problem outside dry-run.
func CheckCredential(c *config.Config) error {
	cred, err := loadCredential(c, logrus.New().WithField("component", "check"), time.Now())
	if err != nil {
		return err
	}
	return cred.err
}
