package cache

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"strings"
)

// Authenticator decides whether an upload token may push to the cache. The
// standalone cache uses a TokenFile; the server can give its API token
// store instead.
type Authenticator interface {
	// AuthenticateUpload returns the name of the token's holder (for logs)
	// and whether it may upload. err is for failures to check (a database
	// down), not for a wrong token.
	AuthenticateUpload(ctx context.Context, token string) (name string, ok bool, err error)
}

// TokenFile is a fixed set of upload tokens read from a file: one per line,
// either "token" or "name:token"; blank lines and lines starting with '#'
// are ignored.
type TokenFile struct {
	tokens []fileToken
}

type fileToken struct {
	name string
	sum  [sha256.Size]byte // compared in constant time
}

// LoadTokenFile reads a token file. A file without tokens is an error: it
// would refuse every upload, which is surely not what was meant.
func LoadTokenFile(path string) (*TokenFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read upload token file: %w", err)
	}
	tf, err := ParseTokens(b)
	if err != nil {
		return nil, fmt.Errorf("upload token file %s: %w", path, err)
	}
	return tf, nil
}

// ParseTokens parses a token file's content.
func ParseTokens(b []byte) (*TokenFile, error) {
	tf := &TokenFile{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, tok, ok := strings.Cut(line, ":")
		if !ok {
			name, tok = fmt.Sprintf("line %d", n), line
		}
		if tok == "" || strings.ContainsAny(tok, " \t") {
			return nil, fmt.Errorf("line %d: a token is one word, alone or after \"name:\"", n)
		}
		tf.tokens = append(tf.tokens, fileToken{name: name, sum: sha256.Sum256([]byte(tok))})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(tf.tokens) == 0 {
		return nil, fmt.Errorf("no tokens (write one per line, or name:token)")
	}
	return tf, nil
}

// AuthenticateUpload implements Authenticator.
func (tf *TokenFile) AuthenticateUpload(_ context.Context, token string) (string, bool, error) {
	sum := sha256.Sum256([]byte(token))
	name, ok := "", false
	for _, t := range tf.tokens {
		// No early exit: the time taken does not tell which token matched.
		if subtle.ConstantTimeCompare(sum[:], t.sum[:]) == 1 && !ok {
			name, ok = t.name, true
		}
	}
	return name, ok, nil
}

// requestToken returns the token of a request: a Bearer token, or the
// password of HTTP Basic auth (what Nix sends from its netrc-file).
func requestToken(r *http.Request) string {
	h := r.Header.Get("Authorization")
	scheme, rest, _ := strings.Cut(h, " ")
	switch {
	case strings.EqualFold(scheme, "Bearer"):
		return strings.TrimSpace(rest)
	case strings.EqualFold(scheme, "Basic"):
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(rest))
		if err != nil {
			return ""
		}
		_, pass, _ := strings.Cut(string(raw), ":")
		return pass
	}
	return ""
}
