package pgstore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/regularfile"
)

// Advisory lock keys: arbitrary constants, the same in every xapsd.
const (
	lockMigrate int64 = 0x78617073_00000001 // "xaps" 1
	lockExpire  int64 = 0x78617073_00000002
)

// channel is the NOTIFY channel; a payload is "<instance> <user>".
const channel = "xapsd_registry"

// db is a connection pool to the registry's database.
type db struct {
	pool *pgxpool.Pool
	opts Options
	cfg  *pgxpool.Config
}

// ErrSchemaTooNew means the database was migrated by a newer xapsd.
var ErrSchemaTooNew = errors.New("database schema is newer than this xapsd")

// ErrOutcomeUnknown is wrapped by Commit's error when a COMMIT was sent
// but its answer never came (the deadline passed while the server waited
// for a synchronous standby, the connection broke): the changes may be
// in the database, now or later, or not at all.
var ErrOutcomeUnknown = errors.New("the database did not confirm the commit; its outcome is unknown")

// ErrURL wraps the error of a database URL that does not parse, and
// ErrPasswordFile the error of a password file that cannot be read.
var (
	ErrURL          = errors.New("database URL")
	ErrPasswordFile = errors.New("password file")
)

// parseConfig reads the URL and the password file.
func parseConfig(o Options) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(o.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrURL, err)
	}
	if o.DatabasePasswordFile != "" {
		b, err := regularfile.ReadFile(o.DatabasePasswordFile, 0, 0)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrPasswordFile, err)
		}
		cfg.ConnConfig.Password = strings.TrimRight(string(b), "\r\n")
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "xapsd"
	cfg.MaxConns = 8
	cfg.MinConns = 1
	cfg.HealthCheckPeriod = 5 * time.Second
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	return cfg, nil
}

// openDB connects and brings the schema up to date. A database that
// cannot be reached is an error here; the caller decides whether to retry.
func openDB(ctx context.Context, o Options) (*db, error) {
	cfg, err := parseConfig(o)
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	s := &db{pool: pool, opts: o, cfg: cfg}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the pool.
func (s *db) Close() { s.pool.Close() }

// migrations, in order; migration i brings the schema to version i+1.
// Never edit one that has shipped: add another.
var migrations = []string{
	`CREATE TABLE xapsd_registrations (
		username     text        NOT NULL,
		account_id   text        NOT NULL,
		device_token text        NOT NULL,
		mailboxes    text[]      NOT NULL,
		registered   timestamptz NOT NULL,
		PRIMARY KEY (username, account_id, device_token)
	);
	CREATE INDEX xapsd_registrations_registered ON xapsd_registrations (registered);`,
	// Device tokens are hex, stored upper case (as iOS sends them): a
	// token stored in both spellings was one device registered twice and
	// pushed twice. The newer row of each is kept.
	`DELETE FROM xapsd_registrations r USING xapsd_registrations n
		WHERE n.username = r.username AND n.account_id = r.account_id
		AND upper(n.device_token) = upper(r.device_token) AND n.device_token <> r.device_token
		AND (n.registered, n.device_token) > (r.registered, r.device_token);
	UPDATE xapsd_registrations SET device_token = upper(device_token) WHERE device_token <> upper(device_token);`,
}

// SchemaVersion is the newest schema this xapsd knows.
var SchemaVersion = len(migrations)

func (s *db) migrate(ctx context.Context) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("migrate schema: %w", err)
	}
	defer tx.Rollback(ctx)
	// One daemon at a time: the others wait here and then find nothing
	// left to do.
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockMigrate); err != nil {
		return fmt.Errorf("migrate schema: lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS xapsd_schema (
		version    integer     PRIMARY KEY,
		applied_at timestamptz NOT NULL DEFAULT now()
	)`); err != nil {
		return fmt.Errorf("migrate schema: %w", err)
	}
	var have int
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM xapsd_schema`).Scan(&have); err != nil {
		return fmt.Errorf("migrate schema: %w", err)
	}
	if have > SchemaVersion {
		return fmt.Errorf("%w: the database has schema version %d, this xapsd knows up to %d; "+
			"upgrade xapsd (every daemon sharing the database must run the newer version), or point it at another database",
			ErrSchemaTooNew, have, SchemaVersion)
	}
	for v := have; v < SchemaVersion; v++ {
		if _, err := tx.Exec(ctx, migrations[v]); err != nil {
			return fmt.Errorf("migrate schema to version %d: %w", v+1, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO xapsd_schema (version) VALUES ($1)`, v+1); err != nil {
			return fmt.Errorf("migrate schema to version %d: %w", v+1, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("migrate schema: %w", err)
	}
	return nil
}

// LoadAll streams every registration to fn.
func (s *db) LoadAll(ctx context.Context, fn func(registry.Registration)) error {
	rows, err := s.pool.Query(ctx, `SELECT username, account_id, device_token, mailboxes, registered
		FROM xapsd_registrations`)
	if err != nil {
		return fmt.Errorf("load registrations: %w", err)
	}
	defer rows.Close()
	var r registry.Registration
	for rows.Next() {
		if err := rows.Scan(&r.User, &r.AccountID, &r.DeviceToken, &r.Mailboxes, &r.Registered); err != nil {
			return fmt.Errorf("load registrations: %w", err)
		}
		fn(r)
		r.Mailboxes = nil // Scan reuses a non-nil slice; fn may keep it
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("load registrations: %w", err)
	}
	return nil
}

// LoadUsers returns the registrations of the given users; a user without
// any is present with an empty list.
func (s *db) LoadUsers(ctx context.Context, users []string) (map[string][]registry.Registration, error) {
	return loadUsers(ctx, s.pool, users)
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func loadUsers(ctx context.Context, q querier, users []string) (map[string][]registry.Registration, error) {
	out := make(map[string][]registry.Registration, len(users))
	for _, u := range users {
		out[u] = nil
	}
	rows, err := q.Query(ctx, `SELECT username, account_id, device_token, mailboxes, registered
		FROM xapsd_registrations WHERE username = ANY($1)`, users)
	if err != nil {
		return nil, fmt.Errorf("load users: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r registry.Registration
		if err := rows.Scan(&r.User, &r.AccountID, &r.DeviceToken, &r.Mailboxes, &r.Registered); err != nil {
			return nil, fmt.Errorf("load users: %w", err)
		}
		out[r.User] = append(out[r.User], r)
	}
	return out, rows.Err()
}

// Commit writes the changes in one transaction, enforces the caps for the
// accounts and users they touch, tells the other daemons, and returns the
// registrations of every touched user as the database now has them.
// Every change is idempotent (an upsert, a delete, the caps), so a commit
// whose outcome is unknown can simply run again: a deadlock with another
// daemon's commit, a connection the server terminated (a restart leaves
// every pooled connection so) and other connection failures are retried a
// few times before the error goes to the caller. When an attempt's COMMIT
// got no answer and no later attempt succeeded, the error wraps
// ErrOutcomeUnknown: the changes may still appear, and the caller must
// look at the users again rather than take them as refused.
func (s *db) Commit(ctx context.Context, changes []registry.Change) (map[string][]registry.Registration, error) {
	unknown := false
	for attempt := 0; ; attempt++ {
		state, err := s.commitOnce(ctx, changes)
		if errors.Is(err, ErrOutcomeUnknown) {
			unknown = true
		}
		if err == nil || attempt >= 4 || !retryable(err) || ctx.Err() != nil {
			if err != nil && unknown && !errors.Is(err, ErrOutcomeUnknown) {
				err = fmt.Errorf("%w; an earlier attempt: %w", err, ErrOutcomeUnknown)
			}
			return state, err
		}
		time.Sleep(time.Duration(attempt+1) * 10 * time.Millisecond)
	}
}

// commitFailed classifies the error of a COMMIT: one the server sent
// (a serialization failure, say) means rolled back; anything else (a
// deadline, a broken connection) leaves the outcome unknown.
func commitFailed(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return fmt.Errorf("commit: %w", err)
	}
	return fmt.Errorf("commit: %w: %w", ErrOutcomeUnknown, err)
}

func retryable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// Connection exception, transaction rollback, operator
		// intervention (shutdown): not a problem with the statements.
		class := pe.Code[:2]
		return class == "08" || class == "40" || class == "57"
	}
	return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

func (s *db) commitOnce(ctx context.Context, changes []registry.Change) (map[string][]registry.Registration, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	defer tx.Rollback(ctx)

	type acct struct{ user, acct string }
	var users []string
	seenUser := map[string]bool{}
	var accts []acct
	seenAcct := map[acct]bool{}
	addUser := func(u string) {
		if !seenUser[u] {
			seenUser[u] = true
			users = append(users, u)
		}
	}
	for _, c := range changes {
		addUser(c.User)
	}
	// Commits that touch the same user wait for each other, in one order
	// (no deadlocks): the caps below count what the other daemon's commit
	// added only once it committed.
	sorted := append([]string(nil), users...)
	sort.Strings(sorted)
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended(u, 0))
		FROM unnest($1::text[]) AS u ORDER BY u`, sorted); err != nil {
		return nil, fmt.Errorf("commit: lock users: %w", err)
	}
	batch := &pgx.Batch{}
	for _, c := range changes {
		switch {
		case !c.Del:
			p := c.Registration
			if a := (acct{p.User, p.AccountID}); !seenAcct[a] {
				seenAcct[a] = true
				accts = append(accts, a)
			}
			q := `INSERT INTO xapsd_registrations (username, account_id, device_token, mailboxes, registered)
				VALUES ($1, $2, $3, $4, $5)
				ON CONFLICT (username, account_id, device_token)
				DO UPDATE SET mailboxes = excluded.mailboxes, registered = excluded.registered`
			if c.KeepNewer {
				q += ` WHERE xapsd_registrations.registered < excluded.registered`
			}
			batch.Queue(q, p.User, p.AccountID, p.DeviceToken, p.Mailboxes, p.Registered)
		default:
			// In any spelling of the token: an older xapsd may have
			// stored it in lower case.
			if c.Before.IsZero() {
				batch.Queue(`DELETE FROM xapsd_registrations
					WHERE username = $1 AND account_id = $2 AND upper(device_token) = upper($3)`, c.User, c.AccountID, c.DeviceToken)
			} else {
				batch.Queue(`DELETE FROM xapsd_registrations
					WHERE username = $1 AND account_id = $2 AND upper(device_token) = upper($3) AND registered < $4`,
					c.User, c.AccountID, c.DeviceToken, c.Before)
			}
		}
	}
	// The caps, newest kept, as the file registry drops the oldest.
	if s.opts.MaxDevicesPerAccount > 0 {
		for _, a := range accts {
			batch.Queue(`DELETE FROM xapsd_registrations r USING (
					SELECT device_token FROM xapsd_registrations
					WHERE username = $1 AND account_id = $2
					ORDER BY registered DESC, device_token OFFSET $3) old
				WHERE r.username = $1 AND r.account_id = $2 AND r.device_token = old.device_token`,
				a.user, a.acct, s.opts.MaxDevicesPerAccount)
		}
	}
	if s.opts.MaxDevicesPerUser > 0 {
		for _, u := range users {
			batch.Queue(`DELETE FROM xapsd_registrations r USING (
					SELECT account_id, device_token FROM xapsd_registrations
					WHERE username = $1
					ORDER BY registered DESC, account_id, device_token OFFSET $2) old
				WHERE r.username = $1 AND r.account_id = old.account_id AND r.device_token = old.device_token`,
				u, s.opts.MaxDevicesPerUser)
		}
	}
	for _, u := range users {
		batch.Queue(`SELECT pg_notify($1, $2)`, channel, s.opts.Instance+" "+u)
	}
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	state, err := loadUsers(ctx, tx, users)
	if err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, commitFailed(err)
	}
	return state, nil
}

// Writable checks that the database commits a write now, the way a
// commit needs it to: a transaction that writes (a row of xapsd_schema
// updated to what it holds), so that its COMMIT is flushed and, with
// synchronous replication, waits for the standby, but that changes
// nothing. (A transaction that only takes a transaction id writes no WAL
// of its own, and PostgreSQL lets its COMMIT skip the standby.) A
// read-only server (a standby) fails it at once. The server's own
// statement_timeout for it is a little longer than ctx, so that a COMMIT
// still waiting for a standby after the caller gave up does not keep a
// session on the server for good.
func (s *db) Writable(ctx context.Context) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("check for writes: %w", err)
	}
	defer tx.Rollback(context.Background())
	wait := 10 * time.Second
	if deadline, ok := ctx.Deadline(); ok {
		wait = time.Until(deadline) + 2*time.Second
	}
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL statement_timeout = %d", max(wait.Milliseconds(), 1))); err != nil {
		return fmt.Errorf("check for writes: %w", err)
	}
	if _, err := tx.Exec(ctx, `UPDATE xapsd_schema SET applied_at = applied_at WHERE version = 1`); err != nil {
		return fmt.Errorf("check for writes: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("check for writes: %w", err)
	}
	return nil
}

// Expire removes the registrations not refreshed since cutoff and returns
// the users it changed. Only one daemon sweeps at a time: the others get
// ran=false and leave it to that one (they hear about the result through
// the notifications).
func (s *db) Expire(ctx context.Context, cutoff time.Time) (users []string, removed int, ran bool, err error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, 0, false, fmt.Errorf("expire: %w", err)
	}
	defer tx.Rollback(ctx)
	if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1)`, lockExpire).Scan(&ran); err != nil {
		return nil, 0, false, fmt.Errorf("expire: %w", err)
	}
	if !ran {
		return nil, 0, false, nil
	}
	rows, err := tx.Query(ctx, `DELETE FROM xapsd_registrations WHERE registered < $1 RETURNING username`, cutoff)
	if err != nil {
		return nil, 0, true, fmt.Errorf("expire: %w", err)
	}
	seen := map[string]bool{}
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			rows.Close()
			return nil, 0, true, fmt.Errorf("expire: %w", err)
		}
		removed++
		if !seen[u] {
			seen[u] = true
			users = append(users, u)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, 0, true, fmt.Errorf("expire: %w", err)
	}
	for _, u := range users {
		if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, channel, s.opts.Instance+" "+u); err != nil {
			return nil, 0, true, fmt.Errorf("expire: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, 0, true, fmt.Errorf("expire: %w", err)
	}
	return users, removed, true, nil
}

// Exclusive runs work while holding the named lock, which no other daemon
// sharing the database holds at the same time; ran is false (and work not
// run) when another daemon holds it now.
func (s *db) Exclusive(ctx context.Context, name string, work func() error) (ran bool, err error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return false, fmt.Errorf("lock %s: %w", name, err)
	}
	defer conn.Release()
	key := lockNamed(name)
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&ran); err != nil {
		return false, fmt.Errorf("lock %s: %w", name, err)
	}
	if !ran {
		return false, nil
	}
	defer conn.Exec(context.Background(), `SELECT pg_advisory_unlock($1)`, key)
	return true, work()
}

// lockNamed turns a lock's name into an advisory lock key beside the
// fixed ones (FNV-1a, in the "xaps" range).
func lockNamed(name string) int64 {
	h := uint32(2166136261)
	for i := 0; i < len(name); i++ {
		h ^= uint32(name[i])
		h *= 16777619
	}
	return 0x78617073_00000000 | int64(h&0x7fffffff) | 0x100
}
