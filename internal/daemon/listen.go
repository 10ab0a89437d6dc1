package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/config"
)

// listenPlugin binds one listener per host of listenAddr. A loopback
// address the host does not have (IPv6 turned off, as in many
// containers) is left out with a warning, as long as another address is
// bound: the default lists both loopbacks, and a host without IPv6 must
// still start. Any other address that cannot be bound fails the start.
// listen is net.Listen; tests pass a stand-in that fails on purpose.
func listenPlugin(cfg *config.Config, log logrus.FieldLogger, listen func(network, addr string) (net.Listener, error)) ([]net.Listener, error) {
	var lns []net.Listener
	var skipped []error
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	for _, addr := range cfg.ListenAddresses() {
		ln, err := listen("tcp", addr)
		switch {
		case err == nil:
			lns = append(lns, ln)
		case isLoopback(addr) && addressMissing(err):
			skipped = append(skipped, fmt.Errorf("listen on %s: %w", addr, err))
		default:
			closeAll()
			return nil, fmt.Errorf("listen on %s (listenAddr/port): %w", addr, err)
		}
	}
	if len(lns) == 0 {
		return nil, fmt.Errorf("listenAddr/port: no address to listen on: %w", errors.Join(skipped...))
	}
	for _, err := range skipped {
		log.WithError(err).Warn("this host has no such loopback address; listening on the others")
	}
	return lns, nil
}

func isLoopback(addr string) bool {
	ap, err := netip.ParseAddrPort(addr)
	return err == nil && ap.Addr().IsLoopback()
}

// addressMissing reports an error that says the address does not exist
// here, as opposed to being taken or forbidden.
func addressMissing(err error) bool {
	return errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EAFNOSUPPORT) ||
		errors.Is(err, syscall.EPROTONOSUPPORT)
}

// checkAddresses is --check-config's test of every address xapsd would
// listen on (listenAddr, tlsListenAddr, metricsListenAddr): each must
// resolve to an address of this host, or a start fails ("no such host",
// "cannot assign requested address"). It binds port 0, not the configured
// port, which the running daemon holds while systemctl reload runs the
// check. A loopback address this host lacks is a note, as at start
// (listenPlugin), as long as another plugin address works.
func checkAddresses(c *config.Config, listen func(network, addr string) (net.Listener, error)) (notes []string, err error) {
	type target struct{ key, host string }
	var targets []target
	for _, h := range c.ListenHosts() {
		targets = append(targets, target{"listenAddr", h})
	}
	if c.TLSEnabled() {
		h, _, _ := net.SplitHostPort(c.TLSListenAddress())
		targets = append(targets, target{"tlsListenAddr", h})
	}
	if c.MetricsEnabled() {
		h, _, _ := net.SplitHostPort(c.MetricsListenAddr)
		targets = append(targets, target{"metricsListenAddr", h})
	}
	var problems []error
	pluginBound := false
	for _, t := range targets {
		addr := net.JoinHostPort(t.host, "0")
		ln, err := listen("tcp", addr)
		switch {
		case err == nil:
			ln.Close()
			pluginBound = pluginBound || t.key == "listenAddr"
		case t.key == "listenAddr" && isLoopback(addr) && addressMissing(err):
			notes = append(notes, fmt.Sprintf("listenAddr: %s: this host has no such loopback address; xapsd listens on the others", t.host))
		default:
			problems = append(problems, fmt.Errorf("%s: %s: %s", t.key, t.host, listenFailure(err)))
		}
	}
	if !pluginBound && len(problems) == 0 {
		problems = append(problems, errors.New("listenAddr: no address to listen on: this host has none of them"))
	}
	return notes, errors.Join(problems...)
}

// listenFailure says why an address cannot be listened on, in words.
func listenFailure(err error) string {
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr):
		return "cannot be resolved (" + dnsErr.Error() + "): write an address of this host or a name that resolves to one"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "is not an address of this host (" + syscall.EADDRNOTAVAIL.Error() + "): write one it has, or \"\" for every interface"
	}
	return "cannot listen there: " + err.Error()
}
