// Package filestore keeps the registry in the files of the state folder
// (statedir): an append-only journal of changes beside a JSON snapshot,
// group commit with one fsync for what queued up meanwhile, compaction,
// the salvage of a damaged snapshot, and the old daemon's database.json,
// which it migrates. It implements registry.Store for a registry that is
// this daemon's alone; the registry holds the registrations in memory and
// hands each batch of changes to Commit.
package filestore

import (
	"io"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/statedir"
)

// Options configure New.
type Options struct {
	// Dir names the files: the snapshot (databaseFile), the journal
	// segments, the lock, the backups.
	Dir statedir.Dir
	// CompactAfter writes a new snapshot after this many journal records,
	// or once the journal has grown by CompactAfterBytes or by the size of
	// the last snapshot, whichever is more: a few huge records must not
	// grow the journal as far as many small ones.
	CompactAfter      int
	CompactAfterBytes int64
	// CheckEvery is how often the store looks for its files deleted
	// under it, and, after a failed write, whether the disk takes writes
	// again, so that Health recovers without a registration.
	CheckEvery time.Duration
	Log        logrus.FieldLogger
	// Now dates the backups and the entries of the old daemon's file that
	// have no time.
	Now func() time.Time
}

func (o *Options) setDefaults() {
	if o.CompactAfter <= 0 {
		o.CompactAfter = 100000
	}
	if o.CompactAfterBytes <= 0 {
		o.CompactAfterBytes = 64 << 20
	}
	if o.CheckEvery <= 0 {
		o.CheckEvery = 5 * time.Second
	}
	if o.Log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		o.Log = l
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}
