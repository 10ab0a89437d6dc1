package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPluginSecretMustBeOneLongPrivateLine(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	good := write("good", "0123456789abcdef0123\n", 0o600)
	if s, err := loadPluginSecret(good); err != nil || string(s) != "0123456789abcdef0123" {
		t.Errorf("good secret = %q, %v", s, err)
	}
	// As the key files: readable by the daemon's group.
	if s, err := loadPluginSecret(write("group", "0123456789abcdef0123\n", 0o640)); err != nil || string(s) != "0123456789abcdef0123" {
		t.Errorf("group-readable secret = %q, %v", s, err)
	}
	link := filepath.Join(dir, "link")
	os.Symlink(good, link)
	for name, c := range map[string]struct {
		path, want string
	}{
		"group-writable": {write("g", "0123456789abcdef0123", 0o660), "0640 root:xapsd"},
		"world-readable": {write("w", "0123456789abcdef0123", 0o604), "0640 root:xapsd"},
		"short":          {write("s", "short\n", 0o600), "at least 16"},
		"space":          {write("sp", "0123456789 abcdef0123", 0o600), "printable ASCII"},
		"two lines":      {write("two", "0123456789abcdef\n0123456789abcdef\n", 0o600), "one line"},
		"empty":          {write("e", "", 0o600), "pluginSecretFile"},
		"link":           {link, "pluginSecretFile"},
		"missing":        {filepath.Join(dir, "nothing"), "no such file"},
	} {
		if _, err := loadPluginSecret(c.path); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one containing %q", name, err, c.want)
		}
	}
}
