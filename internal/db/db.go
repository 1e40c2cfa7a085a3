// Package db is the storage layer: builds, their results and the fleet, in
// SQLite by default or PostgreSQL, with one set of queries.
package db

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"path/filepath"
	"sort"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"
	_ "modernc.org/sqlite"             // driver "sqlite"
)

// Dialect names a SQL engine. Queries are written once, in the subset both
// understand ($n placeholders, RETURNING, ON CONFLICT, BIGINT
// unix-millisecond times); the migrations differ, and so does row locking
// (see forUpdate).
type Dialect string

const (
	SQLite   Dialect = "sqlite"
	Postgres Dialect = "postgres"
)

//go:embed migrations
var migrations embed.FS

// DB is the store. Methods are safe for concurrent use.
type DB struct {
	sql     *sql.DB
	dialect Dialect
}

// ErrNotFound is returned when a row does not exist.
var ErrNotFound = errors.New("not found")

// Open opens and migrates the database named by dsn: a file path or
// "sqlite:///path" for SQLite, "postgres://..." for PostgreSQL.
func Open(ctx context.Context, dsn string) (*DB, error) {
	var (
		d   *DB
		err error
	)
	switch {
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		d, err = openPostgres(ctx, dsn)
	default:
		d, err = openSQLite(strings.TrimPrefix(dsn, "sqlite://"))
	}
	if err != nil {
		return nil, err
	}
	if err := d.migrate(ctx); err != nil {
		return nil, errors.Join(err, d.Close())
	}
	return d, nil
}

func openSQLite(path string) (*DB, error) {
	if path == "" {
		return nil, errors.New("sqlite: empty database path")
	}
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "busy_timeout(10000)", "foreign_keys(1)", "synchronous(NORMAL)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	s, err := sql.Open("sqlite", (&url.URL{Scheme: "file", Path: abs, RawQuery: q.Encode()}).String())
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", abs, err)
	}
	// One connection: SQLite has one writer, and several connections
	// competing for its lock wait on the driver's fixed back-off sleeps
	// (1 to 50 ms), which made the fleet load test's tail latency; queries
	// here take microseconds, so serialising them costs little. Nothing may
	// query d.sql while holding a transaction or open rows.
	s.SetMaxOpenConns(1)
	return &DB{sql: s, dialect: SQLite}, nil
}

// pgMaxConns bounds each process's connections to PostgreSQL: a server and
// several builders share the server's max_connections (100 by default).
// Idle connections are kept up to the same number, because database/sql
// keeps only 2 by default and a busy server would reconnect per query.
const pgMaxConns = 16

func openPostgres(ctx context.Context, dsn string) (*DB, error) {
	s, err := sql.Open("pgx", dsn)
	if err != nil {
		// pgx's parse errors show the DSN with its password masked.
		return nil, fmt.Errorf("postgres: %w", err)
	}
	s.SetMaxOpenConns(pgMaxConns)
	s.SetMaxIdleConns(pgMaxConns)
	if err := s.PingContext(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("connect to postgres (check `database` / --db, and that the server runs and accepts this user): %w", err), s.Close())
	}
	return &DB{sql: s, dialect: Postgres}, nil
}

// Dialect returns the engine the store runs on.
func (d *DB) Dialect() Dialect { return d.dialect }

// Close closes the database.
func (d *DB) Close() error { return d.sql.Close() }

// Ping checks the database answers.
func (d *DB) Ping(ctx context.Context) error { return d.sql.PingContext(ctx) }

// migrateLock is the PostgreSQL advisory lock key held while migrating
// (any constant unlikely to be used by another application of the database).
const migrateLock = 0x6372666f72676530 // "crforge0"

// migrate applies the dialect's migrations not yet recorded, each in its
// own transaction, in file-name order. On PostgreSQL several processes (a
// server and its builders) may start at once: an advisory lock on one
// connection makes them migrate one after another.
func (d *DB) migrate(ctx context.Context) (err error) {
	conn, err := d.sql.Conn(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer func() { err = errors.Join(err, conn.Close()) }()
	if d.dialect == Postgres {
		if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, int64(migrateLock)); err != nil {
			return fmt.Errorf("migrate: lock: %w", err)
		}
		defer func() {
			_, uerr := conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, int64(migrateLock))
			if uerr != nil {
				err = errors.Join(err, fmt.Errorf("migrate: unlock: %w", uerr))
			}
		}()
	}
	if _, err := conn.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	dir := "migrations/" + string(d.dialect)
	entries, err := fs.ReadDir(migrations, dir)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".sql") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	for _, name := range names {
		version := strings.TrimSuffix(name, ".sql")
		body, err := fs.ReadFile(migrations, dir+"/"+name)
		if err != nil {
			return fmt.Errorf("migrate %s: %w", name, err)
		}
		if err := applyMigration(ctx, conn, version, string(body)); err != nil {
			return fmt.Errorf("migrate %s: %w", name, err)
		}
	}
	return nil
}

func applyMigration(ctx context.Context, conn *sql.Conn, version, body string) error {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	err = func() error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = $1`, version).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
		// Without arguments, both drivers run the file's statements as
		// one multi-statement script (pgx: the simple query protocol).
		if _, err := tx.ExecContext(ctx, body); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)`, version, millis(time.Now()))
		return err
	}()
	if err != nil {
		return errors.Join(err, tx.Rollback())
	}
	return tx.Commit()
}

func (d *DB) tx(ctx context.Context, f func(*sql.Tx) error) error {
	tx, err := d.sql.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := f(tx); err != nil {
		return errors.Join(err, tx.Rollback())
	}
	return tx.Commit()
}

// forUpdate is appended to a SELECT, in a transaction, of rows the
// transaction goes on to change: PostgreSQL locks them against concurrent
// writers; SQLite needs nothing, its transactions here being IMMEDIATE
// (they hold the database's one write lock from the start).
func (d *DB) forUpdate() string {
	if d.dialect == Postgres {
		return " FOR UPDATE"
	}
	return ""
}

// scanAll reads every row with scan and closes rows; no rows is an empty
// slice, not nil.
func scanAll[T any](rows *sql.Rows, scan func(interface{ Scan(...any) error }) (T, error)) ([]T, error) {
	defer rows.Close()
	out := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// queryAll runs a query and scans every row with scan; what names it in
// errors.
func queryAll[T any](ctx context.Context, d *DB, scan func(interface{ Scan(...any) error }) (T, error), what, query string, args ...any) ([]T, error) {
	rows, err := d.sql.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	out, err := scanAll(rows, scan)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

func millis(t time.Time) int64 { return t.UnixMilli() }

func fromMillis(n sql.NullInt64) *time.Time {
	if !n.Valid {
		return nil
	}
	t := time.UnixMilli(n.Int64).UTC()
	return &t
}
