package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"github.com/xapsd/xapsd/internal/atomicfile"
	"github.com/xapsd/xapsd/internal/registry"
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

// loadPending reads and removes the file; the pushes are in the sender's
// queue from then on.
func loadPending(path string) ([]registry.Key, error) {
	data, err := readStateFile(path)
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
	if err := os.Remove(path); err != nil {
		return nil, fmt.Errorf("remove %s: %w", path, err)
	}
	return keys, nil
}

// readStateFile reads a file of the state folder without following a
// symbolic link: whoever could plant one there could otherwise have xapsd
// read any file it can reach.
func readStateFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}
