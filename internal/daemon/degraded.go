package daemon

import (
	"errors"

	"github.com/xapsd/xapsd/internal/config"
	"github.com/xapsd/xapsd/internal/creds"
)

// brokenCredential stands in for a credential that does not load at
// start: an expired or not yet valid certificate, a key that does not
// match, a file that is missing. The daemon runs without it instead of
// exiting (under systemd's Restart=on-failure an exit is a restart loop,
// and Dovecot would only say "unreachable"): /register answers 503 with
// the reason, /readyz says it, pushes wait, and the files are watched
// like a working credential's, so a fixed file is picked up without a
// restart.
func brokenCredential(cfg *config.Config, err error) *credential {
	paths := configuredPaths(credentialFiles(cfg))
	c := &credential{client: unavailableClient(err), err: err, sources: paths, stamps: stampFiles(paths)}
	var ve *creds.ValidityError
	if errors.As(err, &ve) {
		// Its topic and dates are still known: for the start-up line and
		// xapsd_credential_expiry_seconds (negative: the alert fires).
		c.client.Topic, c.notAfter = ve.Topic, ve.NotAfter
	}
	return c
}
