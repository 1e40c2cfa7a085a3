// Package signing reads, writes and uses Nix binary-cache signing keys
// (ed25519, "name:base64" files as written by `nix key generate-secret`).
package signing

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode"
)

// SecretKey is a named ed25519 private key.
type SecretKey struct {
	Name string
	key  ed25519.PrivateKey
}

// PublicKey is a named ed25519 public key.
type PublicKey struct {
	Name string
	key  ed25519.PublicKey
}

// Generate creates a new secret key called name, reading randomness from r
// (crypto/rand when r is nil).
func Generate(name string, r io.Reader) (*SecretKey, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	if r == nil {
		r = rand.Reader
	}
	_, priv, err := ed25519.GenerateKey(r)
	if err != nil {
		return nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	return &SecretKey{Name: name, key: priv}, nil
}

// ParseSecretKey parses the content of a secret key file. Surrounding
// whitespace (a trailing newline) is ignored.
func ParseSecretKey(s string) (*SecretKey, error) {
	name, raw, err := split(s)
	if err != nil {
		return nil, err
	}
	if len(raw) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("secret key %q has %d bytes, want %d", name, len(raw), ed25519.PrivateKeySize)
	}
	priv := ed25519.PrivateKey(raw)
	// The second half of a Nix secret key is its public key; a mismatch means
	// the file was damaged, and it would sign with a key nobody trusts.
	derived := ed25519.NewKeyFromSeed(priv.Seed())
	if !derived.Equal(priv) {
		return nil, fmt.Errorf("secret key %q is inconsistent: its public half does not match its seed", name)
	}
	return &SecretKey{Name: name, key: priv}, nil
}

// ParsePublicKey parses "name:base64" with a 32-byte key.
func ParsePublicKey(s string) (*PublicKey, error) {
	name, raw, err := split(s)
	if err != nil {
		return nil, err
	}
	if len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("public key %q has %d bytes, want %d", name, len(raw), ed25519.PublicKeySize)
	}
	return &PublicKey{Name: name, key: ed25519.PublicKey(raw)}, nil
}

func split(s string) (name string, raw []byte, err error) {
	s = strings.TrimSpace(s)
	name, b64, ok := strings.Cut(s, ":")
	if !ok {
		return "", nil, errors.New(`key is not of the form "name:base64"`)
	}
	if err := validName(name); err != nil {
		return "", nil, err
	}
	raw, err = base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return "", nil, fmt.Errorf("key %q: bad base64: %w", name, err)
	}
	return name, raw, nil
}

func validName(name string) error {
	if name == "" {
		return errors.New("key name is empty")
	}
	// The name goes into narinfo Sig lines and HTTP headers, where a
	// control character or a space would break or forge the line.
	if strings.ContainsFunc(name, func(r rune) bool { return r == ':' || unicode.IsSpace(r) || unicode.IsControl(r) }) {
		return fmt.Errorf("key name %q must not contain ':', whitespace or control characters", name)
	}
	return nil
}

// String returns the file form "name:base64", without a newline.
func (k *SecretKey) String() string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(k.key)
}

// Public returns the matching public key.
func (k *SecretKey) Public() *PublicKey {
	return &PublicKey{Name: k.Name, key: k.key.Public().(ed25519.PublicKey)}
}

// Sign returns the Nix signature "name:base64sig" over msg.
func (k *SecretKey) Sign(msg []byte) string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(ed25519.Sign(k.key, msg))
}

// String returns "name:base64".
func (k *PublicKey) String() string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(k.key)
}

// Verify reports whether sig ("name:base64sig") is this key's signature of msg.
func (k *PublicKey) Verify(msg []byte, sig string) bool {
	name, b64, ok := strings.Cut(sig, ":")
	if !ok || name != k.Name {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != ed25519.SignatureSize {
		return false
	}
	return ed25519.Verify(k.key, msg, raw)
}
