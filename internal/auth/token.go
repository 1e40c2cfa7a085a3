package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// TokenPrefix starts every API token, so a leaked one is recognisable
// (secret scanners, logs).
const TokenPrefix = "cft_"

// A token is "cft_<id>_<secret>": id (12 hex digits) finds the stored row,
// secret (32 random bytes, base64url) is what proves possession. Only the
// SHA-256 of the whole token is stored; a high-entropy secret needs no
// slow hash.
var tokenRE = regexp.MustCompile(`^cft_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$`)

// NewToken returns a fresh token, its lookup id and the hash to store.
func NewToken() (token, lookupID string, hash []byte, err error) {
	var idb [6]byte
	var secret [32]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return "", "", nil, fmt.Errorf("generate token: %w", err)
	}
	if _, err := rand.Read(secret[:]); err != nil {
		return "", "", nil, fmt.Errorf("generate token: %w", err)
	}
	lookupID = hex.EncodeToString(idb[:])
	token = TokenPrefix + lookupID + "_" + base64.RawURLEncoding.EncodeToString(secret[:])
	return token, lookupID, HashToken(token), nil
}

// ErrMalformedToken is a bearer value that is not a Crystal Forge token.
var ErrMalformedToken = errors.New("malformed token")

// ParseToken returns the token's lookup id.
func ParseToken(token string) (lookupID string, err error) {
	m := tokenRE.FindStringSubmatch(token)
	if m == nil {
		return "", ErrMalformedToken
	}
	return m[1], nil
}

// HashToken is what is stored for a token.
func HashToken(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// TokenMatches compares a presented token with a stored hash in constant
// time.
func TokenMatches(token string, stored []byte) bool {
	return subtle.ConstantTimeCompare(HashToken(token), stored) == 1
}

var tokenNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidTokenName reports whether s may name a token: letters, digits, '.',
// '_' and '-', at most 64.
func ValidTokenName(s string) bool { return tokenNameRE.MatchString(s) }

// ParseExpiry parses a token lifetime: Go durations ("12h", "90m") plus
// days ("90d"); "" or "never" is no expiry (0).
func ParseExpiry(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	switch s {
	case "", "never", "0":
		return 0, nil
	}
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days <= 0 || days > 3650 {
			return 0, fmt.Errorf("expiry %q: want a number of days from 1 to 3650, like 90d", s)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("expiry %q: want a duration like 90d, 12h or 30m", s)
	}
	return d, nil
}
