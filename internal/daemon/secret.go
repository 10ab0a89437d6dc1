package daemon

import (
	"bytes"
	"fmt"
	"os"
	"syscall"

	"github.com/xapsd/xapsd/internal/regularfile"
)

// minSecretLen keeps out secrets short enough to guess; 32 random bytes
// in hex or base64 are what the docs suggest.
const minSecretLen = 16

// loadPluginSecret reads pluginSecretFile: one line, printable ASCII
// without spaces (it travels in an HTTP header and a Dovecot setting),
// at least minSecretLen characters. A file others may read, or group
// members change, is refused rather than warned about: a warning in a log
// nobody reads would leave the registry open to every local user. Group
// read is allowed, as for the key files (0640 root:xapsd), which is also
// what docker-mailserver's start script makes of the config folder.
func loadPluginSecret(path string) ([]byte, error) {
	f, err := regularfile.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("pluginSecretFile: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("pluginSecretFile: %w", err)
	}
	if perm := st.Mode().Perm(); perm&0o027 != 0 {
		return nil, fmt.Errorf("pluginSecretFile: %s can be read by others or changed by its group (mode %o); "+
			"make it 0640 root:xapsd (or 0600 owned by the user xapsd runs as)", path, perm)
	}
	buf := make([]byte, 1024)
	n, err := f.Read(buf)
	if err != nil {
		return nil, fmt.Errorf("pluginSecretFile: %s: %w", path, err)
	}
	if n == len(buf) {
		return nil, fmt.Errorf("pluginSecretFile: %s is longer than a secret (%d bytes or more)", path, len(buf))
	}
	secret := bytes.TrimRight(buf[:n], "\r\n")
	for _, c := range secret {
		if c <= ' ' || c > '~' {
			return nil, fmt.Errorf("pluginSecretFile: %s must hold one line of printable ASCII without spaces", path)
		}
	}
	if len(secret) < minSecretLen {
		return nil, fmt.Errorf("pluginSecretFile: %s holds %d characters; use at least %d (for example: openssl rand -hex 32)", path, len(secret), minSecretLen)
	}
	return secret, nil
}
