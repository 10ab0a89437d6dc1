package transport

// poolConn is one connection and what the pool knows about it.
type poolConn struct {
	cc       *clientConn
	active   int  // requests on it from this pool
	proven   bool // the last answer that mattered was a 200
	answered bool // APNs has answered on it at least once
	dead     bool
	// streams is the server's stream limit as last read; pushes beyond it
	// wait here, one woken per stream freed. It is read again when the
	// connection is proven and every refreshEvery pushes that find it
	// full, in case the server raised it.
	streams int
	full    int
	// used counts the pushes it was given; sweep closes an extra
	// connection when it has not changed since the previous sweep.
	used, usedAtSweep uint64
}

const refreshEvery = 256

// take counts a push that was given a slot on pc.
func (pc *poolConn) take() {
	pc.active++
	pc.used++
}

// limit is how many pushes pc may carry now.
func (pc *poolConn) limit() int {
	if !pc.proven {
		return 1
	}
	return pc.streams
}

// refreshLimit reads the server's current stream limit.
func (pc *poolConn) refreshLimit() {
	if n := int(pc.cc.State().MaxConcurrentStreams); n > 0 {
		pc.streams = n
	}
}

// waiter is a push waiting in acquire.
type waiter struct {
	ch   chan struct{} // signalled (buffer 1) to look again, or with pc set
	pc   *poolConn     // a slot handed over by passLocked
	gone bool          // gave up (context ended)
}
