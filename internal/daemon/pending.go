package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/atomicfile"
	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/statedir"
)

// The pushes a shutdown could not send are kept in a small file beside the
// registry and sent at the next start: a restart must not swallow the
// "something changed" that a device is waiting for.

func savePending(path string, keys []registry.Key) error {
	if len(keys) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", path, err)
		}
		return nil
	}
	data, err := json.Marshal(keys)
	if err != nil {
		return fmt.Errorf("encode unsent pushes: %w", err)
	}
	if err := atomicfile.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("keep unsent pushes: %w", err)
	}
	return nil
}

// loadPending reads the file. It stays until leftovers.done has seen an
// answer for every push in it, or a shutdown writes it anew.
func loadPending(path string) ([]registry.Key, error) {
	data, err := statedir.ReadFile(path, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var keys []registry.Key
	if err := json.Unmarshal(data, &keys); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return keys, nil
}

// leftovers follows the pushes loaded from pending-pushes.json. Removing
// the file as soon as they were queued lost them to a crash before they
// were sent; now it goes once each has had Apple's final answer (or the
// retries ran out), and a shutdown before that writes it anew.
type leftovers struct {
	mu   sync.Mutex
	path string
	keys map[registry.Key]bool
	log  logrus.FieldLogger
}

func (l *leftovers) track(path string, keys []registry.Key, log logrus.FieldLogger) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.path, l.log = path, log
	l.keys = make(map[registry.Key]bool, len(keys))
	for _, k := range keys {
		l.keys[k] = true
	}
}

// done notes a push that has its final answer.
func (l *leftovers) done(k registry.Key) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.keys[k] {
		return
	}
	delete(l.keys, k)
	if len(l.keys) > 0 {
		return
	}
	if err := os.Remove(l.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		l.log.WithError(err).Warn("cannot remove the pushes left over from the last shutdown; they are sent again at the next start")
	}
}

// stop hands the file over to the shutdown, which writes what is unsent.
func (l *leftovers) stop() {
	l.mu.Lock()
	l.keys = nil
	l.mu.Unlock()
}
