package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/signing"
)

// TestCacheStartupErrors checks that a cache that cannot start says why
// and how to fix it, with the right exit code. None of these cases reach
// the Nix store, so they need no Nix.
func TestCacheStartupErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing-key")
	corrupt := filepath.Join(dir, "corrupt-key")
	if err := os.WriteFile(corrupt, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	valid := filepath.Join(dir, "valid-key")
	k, err := signing.Generate("test", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(valid, []byte(k.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(dir, "truncated-key")
	if err := os.WriteFile(truncated, []byte("host:AAAA\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	busy := holdPort(t)
	// The server case binds its ports before it reads the key: free ones.
	t.Setenv("BUILD_SERVER_API_PORT", freePort(t))
	t.Setenv("BUILD_SERVER_CACHE_PORT", freePort(t))
	emptyTokens := filepath.Join(dir, "empty-tokens")
	if err := os.WriteFile(emptyTokens, []byte("# nobody yet\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	storage := "dir://" + filepath.Join(dir, "storage")
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  []string // substrings of stderr
	}{
		{"missing key", []string{"cache", "--key-file", missing}, 1,
			[]string{"does not exist", "crystal-forge keygen --key-file " + missing}},
		{"corrupt key", []string{"cache", "--key-file", corrupt}, 1,
			[]string{corrupt, "corrupt", "delete it", "crystal-forge keygen --key-file " + corrupt}},
		{"truncated key", []string{"cache", "--key-file", truncated}, 1,
			[]string{"corrupt", "delete it"}},
		{"second key missing", []string{"cache", "--key-file", valid, "--key-file", missing}, 1,
			[]string{"does not exist", "crystal-forge keygen --key-file " + missing}},
		{"server, corrupt key", []string{"server", "--key-file", corrupt}, 1,
			[]string{"corrupt", "delete it"}},
		// The port is checked before the store is opened (this database
		// does not exist).
		{"port in use", []string{"cache", "--key-file", valid, "--listen", busy, "--nix-db", filepath.Join(dir, "no-db.sqlite")}, 1,
			[]string{"listen on " + busy, "already in use", "set --listen to a free port"}},
		{"no local store, no storage", []string{"cache", "--key-file", valid, "--no-local-store"}, 1,
			[]string{"--no-local-store needs --storage"}},
		{"tokens without storage", []string{"cache", "--key-file", valid, "--upload-token-file", emptyTokens}, 1,
			[]string{"--upload-token-file needs --storage"}},
		{"no tokens in the token file", []string{"cache", "--key-file", valid, "--no-local-store", "--storage", storage, "--upload-token-file", emptyTokens}, 1,
			[]string{emptyTokens, "no tokens"}},
		{"unknown storage", []string{"cache", "--key-file", valid, "--storage", "ftp://host/x"}, 1,
			[]string{"unknown scheme", "dir:///path"}},
		{"unknown signature policy", []string{"cache", "--key-file", valid, "--no-local-store", "--storage", storage, "--upload-token-file", valid, "--signature-policy", "maybe"}, 1,
			[]string{"unknown signature policy"}},
		{"unknown flag", []string{"cache", "--no-such-flag"}, 2,
			[]string{"flag provided but not defined: -no-such-flag"}},
		{"bad flag value", []string{"cache", "--priority", "high"}, 2,
			[]string{"invalid value"}},
		{"extra argument", []string{"cache", "--key-file", missing, "extra"}, 2,
			[]string{"unexpected arguments"}},
		{"unknown command", []string{"cash"}, 2,
			[]string{`unknown command "cash"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(t.Context(), tt.args, &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("run(%q) = %d, want %d\nstderr:\n%s", tt.args, code, tt.wantCode, &stderr)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr does not contain %q:\n%s", want, &stderr)
				}
			}
		})
	}
	// A failed start must not create or rewrite key files.
	if _, err := os.Stat(missing); err == nil {
		t.Errorf("%s was created", missing)
	}
	if b, err := os.ReadFile(corrupt); err != nil || string(b) != "not a key\n" {
		t.Errorf("%s changed: %q, %v", corrupt, b, err)
	}
}

// holdPort listens on a free local port until the test ends and returns
// its address.
func holdPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// freePort returns a local port number nothing listens on just now.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}
