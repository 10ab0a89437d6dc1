package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

// measureFollow starts a second daemon on the same database and measures
// how long a registration acknowledged by the first takes to be known to
// the second: each is registered on A, then B is asked (/notify) until it
// knows the user.
func measureFollow(o options, dir, apnsURL, caFile string, a *daemon, add func(name, value, note string)) error {
	bdir := filepath.Join(dir, "second")
	os.MkdirAll(bdir, 0o700)
	for _, f := range []string{"push.pem", "push.key"} {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return err
		}
		os.WriteFile(filepath.Join(bdir, f), data, 0o600)
	}
	mo := o
	mo.metricsAddr = "off"
	b, err := startDaemon(mo, bdir, apnsURL, caFile)
	if err != nil {
		return fmt.Errorf("second daemon: %w", err)
	}
	defer b.stop()
	ca, cb := newPluginConn(a.addr), newPluginConn(b.addr)
	defer ca.close()
	defer cb.close()
	const n = 300
	lats := make([]time.Duration, 0, n)
	for i := range n {
		user := fmt.Sprintf("follow%d@example.com", i)
		body := fmt.Sprintf(`{"ApsAccountId":"ACC-F%06d","ApsDeviceToken":"%064X","ApsSubtopic":"com.apple.mobilemail","Username":%q,"Mailboxes": ["INBOX"]}`, i, 1<<40+i, user)
		if st, err := ca.post("/register", body); err != nil || st != 200 {
			return fmt.Errorf("register on A: %d %v", st, err)
		}
		acked := time.Now()
		for {
			st, err := cb.post("/notify", fmt.Sprintf(`{"Username":%q,"Mailbox":"INBOX","Events": ["MessageNew"]}`, user))
			if err != nil {
				return fmt.Errorf("notify on B: %w", err)
			}
			if st == 200 {
				break
			}
			if time.Since(acked) > 10*time.Second {
				return fmt.Errorf("B did not learn of %s within 10 s", user)
			}
			time.Sleep(200 * time.Microsecond)
		}
		lats = append(lats, time.Since(acked))
	}
	add("registration on A known to B", "p99 "+pct(lats, 99), fmt.Sprintf("(median %s, max %s; %d registrations, one at a time)", pct(lats, 50), pct(lats, 100), n))
	return nil
}

// measurePostgresLoad fills the database with o.bigRegistry registrations
// and measures a daemon's start, which loads them all.
func measurePostgresLoad(o options, dir, apnsURL, caFile string, leaf *testpki.Leaf, add func(name, value, note string)) error {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, o.databaseURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `INSERT INTO xapsd_registrations (username, account_id, device_token, mailboxes, registered)
		SELECT 'big' || g || '@example.com', 'ACC-' || g, lpad(to_hex(g), 64, '0'), ARRAY['INBOX', 'Notes'], now()
		FROM generate_series(1, $1) AS g ON CONFLICT DO NOTHING`, o.bigRegistry); err != nil {
		return fmt.Errorf("fill the database: %w", err)
	}
	var total int
	conn.QueryRow(ctx, `SELECT count(*) FROM xapsd_registrations`).Scan(&total)
	return measureStart(o, filepath.Join(dir, "big-pg"), apnsURL, caFile, leaf,
		fmt.Sprintf("start with %d registrations in PostgreSQL", total), "", add)
}
