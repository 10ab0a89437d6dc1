// Package filestore keeps the registry in the files of the state folder
// (statedir): an append-only journal of changes beside a JSON snapshot,
// group commit with one fsync for what queued up meanwhile, compaction,
// the salvage of a damaged snapshot, and the old daemon's database.json,
// which it migrates. It implements registry.Store for a registry that is
// this daemon's alone; the registry holds the registrations in memory and
// hands each batch of changes to Commit.
package filestore

import (
	"time"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/logging"
	"github.com/xapsd/xapsd/internal/statedir"
)

// Options configure New. The daemon passes the configuration's values
// under the same names (internal/config holds every default); a zero
// value turns its rule off.
type Options struct {
	// Dir names the files: the snapshot (databaseFile), the journal
	// segments, the lock, the backups.
	Dir statedir.Dir
	// RegistryCompactAfter writes a new snapshot after this many journal
	// records, and RegistryCompactAfterBytes once the journal has grown by
	// this many bytes or by the size of the last snapshot, whichever is
	// more: a few huge records must not grow the journal as far as many
	// small ones. 0: no such rule.
	RegistryCompactAfter      int
	RegistryCompactAfterBytes int64
	// RegistryCheckInterval is how often the store looks for its files
	// deleted under it, and, after a failed write, whether the disk takes
	// writes again, so that Health recovers without a registration.
	// 0: it does not look.
	RegistryCheckInterval time.Duration
	// Log gets what the store has to say; nil: nothing is logged.
	Log logrus.FieldLogger
	// Now dates the backups and the entries of the old daemon's file that
	// have no time; nil: time.Now.
	Now func() time.Time
}

func (o *Options) setDefaults() {
	if o.Log == nil {
		o.Log = logging.Discard()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}
