package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// APIToken is a stored API token: its hash, never the token.
type APIToken struct {
	Name       string     `json:"name"`
	LookupID   string     `json:"-"`
	Hash       string     `json:"-"` // hex SHA-256 of the token
	Role       string     `json:"role"`
	CreatedBy  string     `json:"created_by"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  *time.Time `json:"expires_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
}

const tokenCols = `name, lookup_id, token_hash, role, created_by, created_at, expires_at, last_used_at`

func scanToken(row interface{ Scan(...any) error }) (*APIToken, error) {
	var (
		t                APIToken
		created          int64
		expires, lastUse sql.NullInt64
	)
	err := row.Scan(&t.Name, &t.LookupID, &t.Hash, &t.Role, &t.CreatedBy, &created, &expires, &lastUse)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	t.CreatedAt = time.UnixMilli(created).UTC()
	t.ExpiresAt, t.LastUsedAt = fromMillis(expires), fromMillis(lastUse)
	return &t, nil
}

// CreateToken stores a token; ErrExists when its name is taken.
func (d *DB) CreateToken(ctx context.Context, t *APIToken) error {
	var expires sql.NullInt64
	if t.ExpiresAt != nil {
		expires = sql.NullInt64{Int64: millis(*t.ExpiresAt), Valid: true}
	}
	res, err := d.sql.ExecContext(ctx, `INSERT INTO api_tokens (name, lookup_id, token_hash, role, created_by, created_at, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING`,
		t.Name, t.LookupID, t.Hash, t.Role, t.CreatedBy, millis(t.CreatedAt), expires)
	if err != nil {
		return fmt.Errorf("create token %s: %w", t.Name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrExists
	}
	return nil
}

// TokenByLookupID returns the token with this lookup id.
func (d *DB) TokenByLookupID(ctx context.Context, id string) (*APIToken, error) {
	t, err := scanToken(d.sql.QueryRowContext(ctx, `SELECT `+tokenCols+` FROM api_tokens WHERE lookup_id = $1`, id))
	if err != nil && !errors.Is(err, ErrNotFound) {
		err = fmt.Errorf("look up token: %w", err)
	}
	return t, err
}

// Tokens lists every token by name.
func (d *DB) Tokens(ctx context.Context) ([]*APIToken, error) {
	return queryAll(ctx, d, scanToken, "list tokens", `SELECT `+tokenCols+` FROM api_tokens ORDER BY name`)
}

// DeleteToken removes a token; ErrNotFound when there is none by that name.
func (d *DB) DeleteToken(ctx context.Context, name string) error {
	return d.execOne(ctx, "delete token", `DELETE FROM api_tokens WHERE name = $1`, name)
}

// TouchToken records a token's use.
func (d *DB) TouchToken(ctx context.Context, name string, at time.Time) error {
	return d.exec(ctx, "record token use", `UPDATE api_tokens SET last_used_at = $1 WHERE name = $2`, millis(at), name)
}

// RecordDelivery stores a webhook delivery id; it returns false when the
// id was already recorded (a redelivery or a replay). Records older than
// keep are dropped on the way, so the table stays bounded.
func (d *DB) RecordDelivery(ctx context.Context, provider, id, repository string, at time.Time, keep time.Duration) (bool, error) {
	var fresh bool
	err := d.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM webhook_deliveries WHERE at < $1`, millis(at.Add(-keep))); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO webhook_deliveries (provider, delivery_id, repository, at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`,
			provider, id, repository, millis(at))
		if err != nil {
			return err
		}
		n, _ := res.RowsAffected()
		fresh = n == 1
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("record webhook delivery: %w", err)
	}
	return fresh, nil
}
