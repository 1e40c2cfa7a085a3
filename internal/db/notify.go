package db

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
)

// Channels of the notifications the queue sends on PostgreSQL, each with a
// build id as payload: who waits on the database (idle builders, a
// server following its builds) is woken at once instead of at its next
// poll. On SQLite nothing is sent and waiters poll, as they must anyway
// (a notification may be missed while a listener reconnects).
const (
	// ChanJobs: jobs of the build were queued or ended.
	ChanJobs = "crystal_forge_jobs"
	// ChanLogs: a job of the build logged.
	ChanLogs = "crystal_forge_logs"
)

// notify sends a notification with the build id as payload, delivered when
// tx commits. Nothing on SQLite.
func (d *DB) notify(ctx context.Context, tx *sql.Tx, channel string, buildID int64) error {
	if d.dialect != Postgres {
		return nil
	}
	_, err := tx.ExecContext(ctx, `SELECT pg_notify($1, $2)`, channel, strconv.FormatInt(buildID, 10))
	return err
}

// notifyNow is notify outside a transaction.
func (d *DB) notifyNow(ctx context.Context, channel string, buildID int64) error {
	if d.dialect != Postgres {
		return nil
	}
	_, err := d.sql.ExecContext(ctx, `SELECT pg_notify($1, $2)`, channel, strconv.FormatInt(buildID, 10))
	return err
}

// Notification is a notification received: its channel and build id.
type Notification struct {
	Channel string
	BuildID int64
}

// Listen returns the notifications on channels until ctx ends, from a
// connection of its own that it reconnects after an error. On SQLite it
// returns nil: a nil channel never delivers, and the caller polls.
func (d *DB) Listen(ctx context.Context, log *slog.Logger, channels ...string) <-chan Notification {
	if d.dialect != Postgres {
		return nil
	}
	out := make(chan Notification, 64)
	go func() {
		defer close(out)
		for ctx.Err() == nil {
			err := d.listenOnce(ctx, channels, out)
			if ctx.Err() != nil {
				return
			}
			log.Warn("listening for queue notifications; polling meanwhile, reconnecting in 1s", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	return out
}

// listenOnce listens on one connection until it fails or ctx ends.
func (d *DB) listenOnce(ctx context.Context, channels []string, out chan<- Notification) error {
	conn, err := d.sql.Conn(ctx)
	if err != nil {
		return err
	}
	defer func() {
		// The connection has LISTENs and may be broken by a cancelled
		// wait: never give it back to the pool.
		_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		_ = conn.Close()
	}()
	return conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("listen: unexpected driver connection %T", dc)
		}
		pc := sc.Conn()
		for _, ch := range channels {
			if _, err := pc.Exec(ctx, `LISTEN "`+ch+`"`); err != nil {
				return fmt.Errorf("listen on %s: %w", ch, err)
			}
		}
		for {
			n, err := pc.WaitForNotification(ctx)
			if err != nil {
				return err
			}
			id, err := strconv.ParseInt(n.Payload, 10, 64)
			if err != nil {
				continue // not ours
			}
			select {
			case out <- Notification{Channel: n.Channel, BuildID: id}:
			default:
				// A slow reader loses notifications, not the database
				// connection: it polls anyway.
			}
		}
	})
}
