package auth

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/db"
)

// Tokens manages API tokens over the database.
type Tokens struct {
	DB  *db.DB
	Now func() time.Time
}

// Errors of Authenticate; each is a 401.
var (
	ErrUnknownToken = errors.New("unknown or revoked token")
	ErrExpiredToken = errors.New("token expired")
	// ErrInvalid is a bad token request (400).
	ErrInvalid = errors.New("invalid token request")
)

// touchEvery bounds the writes "last used" costs: at most one per token
// per minute.
const touchEvery = time.Minute

func (t *Tokens) now() time.Time {
	if t.Now != nil {
		return t.Now()
	}
	return time.Now()
}

// Created is a new token: the only time its secret is seen.
type Created struct {
	Token string `json:"token"`
	*db.APIToken
}

// Create makes a token named name with role, valid for ttl (0: no expiry).
func (t *Tokens) Create(ctx context.Context, name string, role Role, ttl time.Duration, createdBy string) (*Created, error) {
	if !ValidTokenName(name) {
		return nil, fmt.Errorf("%w: name %q: use letters, digits, '.', '_' and '-' (at most 64)", ErrInvalid, name)
	}
	if role < RoleRead || role > RoleAdmin {
		return nil, fmt.Errorf("%w: role must be read, trigger or admin", ErrInvalid)
	}
	if ttl < 0 {
		return nil, fmt.Errorf("%w: expiry must not be negative", ErrInvalid)
	}
	tok, id, hash, err := NewToken()
	if err != nil {
		return nil, err
	}
	now := t.now().UTC().Truncate(time.Millisecond)
	row := &db.APIToken{Name: name, LookupID: id, Hash: hex.EncodeToString(hash), Role: role.String(), CreatedBy: createdBy, CreatedAt: now}
	if ttl > 0 {
		exp := now.Add(ttl)
		row.ExpiresAt = &exp
	}
	if err := t.DB.CreateToken(ctx, row); err != nil {
		return nil, err
	}
	return &Created{Token: tok, APIToken: row}, nil
}

// Authenticate returns the identity a bearer token stands for.
func (t *Tokens) Authenticate(ctx context.Context, token, remote string) (*Identity, error) {
	id, err := ParseToken(token)
	if err != nil {
		return nil, ErrUnknownToken
	}
	row, err := t.DB.TokenByLookupID(ctx, id)
	if errors.Is(err, db.ErrNotFound) {
		return nil, ErrUnknownToken
	}
	if err != nil {
		return nil, err
	}
	stored, err := hex.DecodeString(row.Hash)
	if err != nil || !TokenMatches(token, stored) {
		return nil, ErrUnknownToken
	}
	now := t.now()
	if row.ExpiresAt != nil && !now.Before(*row.ExpiresAt) {
		return nil, ErrExpiredToken
	}
	role, err := ParseRole(row.Role)
	if err != nil {
		return nil, fmt.Errorf("token %s: stored %w", row.Name, err)
	}
	if row.LastUsedAt == nil || now.Sub(*row.LastUsedAt) >= touchEvery {
		if err := t.DB.TouchToken(ctx, row.Name, now); err != nil {
			return nil, err
		}
	}
	return &Identity{Kind: KindToken, Name: row.Name, Role: role, Remote: remote}, nil
}

// List returns every token (without secrets).
func (t *Tokens) List(ctx context.Context) ([]*db.APIToken, error) { return t.DB.Tokens(ctx) }

// Revoke deletes a token: it stops working at once.
func (t *Tokens) Revoke(ctx context.Context, name string) error {
	if !ValidTokenName(name) {
		return fmt.Errorf("%w: name %q", ErrInvalid, name)
	}
	return t.DB.DeleteToken(ctx, name)
}

// AuthenticateUpload lets API tokens of role trigger or admin push to the
// binary cache (it implements cache.Authenticator): CI that may build may
// also upload what it built. A token of role read, an expired or unknown
// one, is refused.
func (t *Tokens) AuthenticateUpload(ctx context.Context, token string) (string, bool, error) {
	if _, err := ParseToken(token); err != nil {
		return "", false, nil
	}
	id, err := t.Authenticate(ctx, token, "")
	switch {
	case errors.Is(err, ErrUnknownToken), errors.Is(err, ErrExpiredToken):
		return "", false, nil
	case err != nil:
		return "", false, err
	}
	return id.String(), id.Role.Allows(RoleTrigger), nil
}
