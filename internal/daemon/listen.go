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
