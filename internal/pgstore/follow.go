package pgstore

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// follower hears about the changes other daemons commit.
type follower struct {
	// Changed gets the users another daemon changed, a few at a time.
	Changed func(users []string)
	// Reset runs after each (re)connection, once LISTEN is in place and
	// before any Changed: the caller reloads everything, because changes
	// made while it was not listening are not announced again.
	Reset func(ctx context.Context) error
	// Err reports a lost connection or a failed Reset; Follow retries.
	Err func(error)
	// Connected reports whether the follower listens right now.
	Connected func(bool)
	// Mine, when set, says whether a change this daemon committed itself
	// must reach Changed too: one whose commit's outcome it does not
	// know (ErrOutcomeUnknown). Its notification comes when the commit
	// ends, which may be long after the caller gave up.
	Mine func(user string) bool
}

// listener is a connection that listens for the changes other daemons
// commit.
type listener struct{ conn *pgx.Conn }

// Listen connects and listens for the changes other daemons commit. A
// caller that loads everything once Listen has returned, and then hands
// the listener to Follow, misses no change.
func (s *db) Listen(ctx context.Context) (*listener, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.ConnectConfig(cctx, s.cfg.ConnConfig.Copy())
	cancel()
	if err != nil {
		return nil, fmt.Errorf("listen for other daemons' changes: %w", err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("listen for other daemons' changes: %w", err)
	}
	return &listener{conn: conn}, nil
}

// Close closes the connection.
func (l *listener) Close() { l.conn.Close(context.Background()) }

// Follow listens until ctx ends, reconnecting with a growing pause after
// a lost connection or a failed Reset. first, when not nil, is a listener
// the caller loaded everything after: it is followed first, without a
// Reset.
func (s *db) Follow(ctx context.Context, f follower, first *listener) {
	pause := 100 * time.Millisecond
	for ctx.Err() == nil {
		var err error
		l := first
		first = nil
		if l == nil {
			if l, err = s.Listen(ctx); err == nil {
				if err = f.Reset(ctx); err != nil {
					l.Close()
					err = fmt.Errorf("reload the registry: %w", err)
				}
			}
		}
		if err == nil {
			pause = 100 * time.Millisecond
			err = s.serve(ctx, f, l)
		}
		if f.Connected != nil {
			f.Connected(false)
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil && f.Err != nil {
			f.Err(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		if pause *= 2; pause > 5*time.Second {
			pause = 5 * time.Second
		}
	}
}

// serve hands the notifications l receives to f until ctx ends or the
// connection is lost, and closes l.
func (s *db) serve(ctx context.Context, f follower, l *listener) error {
	conn := l.conn
	defer l.Close()
	if f.Connected != nil {
		f.Connected(true)
	}
	// The reader hands users over as notifications arrive; this loop
	// groups what arrives close together into one Changed, so that a
	// burst of commits elsewhere becomes one reload here.
	users := make(chan string, 4096)
	readErr := make(chan error, 1)
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		own := s.opts.Instance + " "
		for {
			n, err := conn.WaitForNotification(rctx)
			if err != nil {
				readErr <- err
				close(users)
				return
			}
			if n.Channel != channel {
				continue
			}
			if user, ok := strings.CutPrefix(n.Payload, own); ok {
				if f.Mine != nil && f.Mine(user) {
					users <- user
				}
				continue
			}
			if _, user, ok := strings.Cut(n.Payload, " "); ok {
				users <- user
			}
		}
	}()
	for {
		u, ok := <-users
		if !ok {
			err := <-readErr
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("listen for other daemons' changes: %w", err)
		}
		set := map[string]bool{u: true}
		window := time.After(2 * time.Millisecond)
	gather:
		for len(set) < 1000 {
			select {
			case u, ok := <-users:
				if !ok {
					break gather
				}
				set[u] = true
			case <-window:
				break gather
			}
		}
		list := make([]string, 0, len(set))
		for u := range set {
			list = append(list, u)
		}
		f.Changed(list)
	}
}
