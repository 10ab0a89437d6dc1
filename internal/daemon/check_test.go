package daemon

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/xapsd/xapsd/internal/config"
	"github.com/xapsd/xapsd/internal/filestore"
	"github.com/xapsd/xapsd/internal/pgstore"
	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/statedir"
)

// --check-config binds every address a start would (on port 0) and says
// which one fails and why, instead of passing a configuration the daemon
// then cannot start with.
func TestCheckAddressesNamesTheOneThatCannotBeListenedOn(t *testing.T) {
	for _, tc := range []struct {
		name, listenAddr, metrics, want string
	}{
		// TEST-NET-1 (RFC 5737): an address no host here has.
		{"not an address of this host", "192.0.2.1", "off", "listenAddr: 192.0.2.1: is not an address of this host"},
		{"a name that does not resolve", "nosuchhost.invalid", "off", "listenAddr: nosuchhost.invalid: cannot be resolved"},
		{"one bad among good ones", "127.0.0.1, 192.0.2.1", "off", "listenAddr: 192.0.2.1: is not an address of this host"},
		{"the metrics listener", "127.0.0.1", "192.0.2.1:11621", "metricsListenAddr: 192.0.2.1: is not an address of this host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := config.Default()
			c.ListenAddr, c.MetricsListenAddr = tc.listenAddr, tc.metrics
			_, err := checkAddresses(c, net.Listen)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
	c := config.Default()
	c.ListenAddr = "127.0.0.1, localhost"
	if notes, err := checkAddresses(c, net.Listen); err != nil || len(notes) != 0 {
		t.Errorf("loopback and localhost: notes %q, error %v", notes, err)
	}
}

// A loopback address the host lacks (IPv6 off) is a note, as at start,
// as long as another one works; none at all is an error.
func TestCheckAddressesMissingLoopbackIsANote(t *testing.T) {
	noIPv6 := func(network, addr string) (net.Listener, error) {
		if strings.HasPrefix(addr, "[::1]") {
			return nil, &net.OpError{Op: "listen", Net: network, Err: syscall.EADDRNOTAVAIL}
		}
		return net.Listen(network, addr)
	}
	c := config.Default() // both loopbacks
	notes, err := checkAddresses(c, noIPv6)
	if err != nil || len(notes) != 1 || !strings.Contains(notes[0], "listenAddr: ::1: this host has no such loopback address") {
		t.Errorf("default without IPv6: notes %q, error %v", notes, err)
	}
	c.ListenAddr = "::1"
	if _, err := checkAddresses(c, noIPv6); err == nil || !strings.Contains(err.Error(), "no address to listen on") {
		t.Errorf("::1 alone without IPv6: %v", err)
	}
}

// Errors of the registry's store name the setting to change: the stores
// speak of a URL, a password file, a link, a folder, and the daemon adds
// the key.
func TestStoreErrorsNameTheirSetting(t *testing.T) {
	dir := t.TempDir()
	c := config.Default()
	c.DatabaseFile = filepath.Join(dir, "database.json")
	os.Symlink(filepath.Join(dir, "elsewhere"), c.DatabaseFile)
	shared := filepath.Join(dir, "shared")
	os.Mkdir(shared, 0o700)
	os.Chmod(shared, 0o777|os.ModeSticky)
	open := func(st registry.Store) error {
		r, err := registry.Open(st, registry.Options{})
		if err == nil {
			r.Close()
		}
		return err
	}
	for _, tc := range []struct {
		name string
		err  error
		key  string
	}{
		{"password file", open(pgstore.New(pgstore.Options{DatabaseURL: "postgres://127.0.0.1:1/x", DatabasePasswordFile: filepath.Join(dir, "missing")})),
			"databasePasswordFile: password file"},
		{"URL", open(pgstore.New(pgstore.Options{DatabaseURL: "postgres://a b"})), "databaseURL: database URL"},
		{"a link", open(filestore.New(filestore.Options{Dir: statedir.New(c.DatabaseFile)})), "point databaseFile at the real file"},
		{"a shared folder", statedir.New(filepath.Join(shared, "database.json")).Make(quietLogger()), "point databaseFile into it"},
	} {
		if tc.err == nil {
			t.Errorf("%s: no error", tc.name)
		} else if got := stateError(c, tc.err); !strings.Contains(got.Error(), tc.key) {
			t.Errorf("%s: %v, want it to say %q", tc.name, got, tc.key)
		}
	}
}
