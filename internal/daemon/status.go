package daemon

import (
	"context"
	"time"

	"github.com/xapsd/xapsd/internal/diagnose"
)

// reachTimeout bounds xapsd diagnose's attempt to connect to APNs.
const reachTimeout = 10 * time.Second

// status is what the daemon says about itself to xapsd diagnose: the
// credential as the start-up line names it, why devices cannot register
// (as /readyz says), why sending is paused, and whether APNs can be
// reached with the current credential.
func (d *Daemon) status(ctx context.Context) diagnose.Daemon {
	cfg, cred := d.cfg.Load(), d.cred.Load()
	s := diagnose.Daemon{Credential: credentialKind(cfg), Topic: cred.client.Topic, Expires: cred.notAfter, DryRun: cfg.DryRun()}
	if err := cred.problem(time.Now()); err != nil {
		s.Problem = err.Error()
	}
	if _, err := d.sender.Paused(); err != nil {
		s.Paused = err.Error()
	}
	ctx, cancel := context.WithTimeout(ctx, reachTimeout)
	defer cancel()
	s.APNs = d.sender.Client().Reach(ctx)
	return s
}
