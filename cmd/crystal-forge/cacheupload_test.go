package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/auth"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// TestServerCacheUpload pushes a closure with `nix copy --to` into a real
// server's cache port (token from upload_token_file, via a netrc file) and
// copies it back into a fresh store trusting only the server's key. The
// closure comes from a separate local store, so the server's own (the
// system) store does not have it: it can only be served from the upload.
func TestServerCacheUpload(t *testing.T) {
	testsupport.RequireNix(t)
	c, src := closureOutsideSystemStore(t)

	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("ci:tok-123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := testsupport.StartServer(t, testsupport.ServerOptions{ExtraTOML: "upload_token_file = \"" + tokens + "\""})
	pubBytes, err := os.ReadFile(srv.StdoutFile)
	if err != nil {
		t.Fatal(err)
	}
	pub := strings.TrimSpace(strings.SplitN(string(pubBytes), "\n", 2)[0])

	netrc := filepath.Join(dir, "netrc")
	if err := os.WriteFile(netrc, []byte("machine 127.0.0.1 login ci password tok-123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"XDG_CACHE_HOME=" + t.TempDir()}
	if _, err := testsupport.NixCommandEnv(t.Context(), env, "nix", "copy", "--from", src, "--to", srv.CacheURL+"?compression=zstd",
		"--option", "netrc-file", netrc, c.Top); err != nil {
		t.Fatal(err)
	}
	// Stored in the default backend, under the data directory.
	for _, p := range c.All {
		if _, err := os.Stat(filepath.Join(srv.Config.DataDir, "cache", filepath.Base(p)[:32]+".narinfo")); err != nil {
			t.Errorf("uploaded %s: %v", p, err)
		}
	}

	dest := testsupport.NewLocalStore(t)
	if _, err := testsupport.NixCommandEnv(t.Context(), []string{"XDG_CACHE_HOME=" + t.TempDir()}, "nix", "copy", "--from", srv.CacheURL, "--to", dest,
		"--option", "trusted-public-keys", pub, c.Top); err != nil {
		t.Fatal(err)
	}
	if out, err := testsupport.NixCommand(t.Context(), "nix", "store", "verify", "--store", dest, "--all",
		"--option", "trusted-public-keys", pub); err != nil || strings.Contains(out, "untrusted") {
		t.Errorf("nix store verify: %v %s", err, out)
	}
	a, err := os.ReadFile(filepath.Join(src, c.Top, "paths"))
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dest, c.Top, "paths")); err != nil || string(a) != string(b) {
		t.Errorf("%s/paths after the round trip: %q (%v), want %q", c.Top, b, err, a)
	}
}

// TestServerCacheUploadAPIToken: without any upload_token_file, the
// server's API tokens authenticate uploads: one of role read is refused and
// stores nothing, one of role trigger pushes the closure.
func TestServerCacheUploadAPIToken(t *testing.T) {
	testsupport.RequireNix(t)
	c, src := closureOutsideSystemStore(t)
	srv := testsupport.StartServer(t, testsupport.ServerOptions{})
	tokens := serverTokens(t, srv)
	push := func(role auth.Role) error {
		t.Helper()
		tok := createToken(t, tokens, "up-"+role.String(), role)
		netrc := filepath.Join(t.TempDir(), "netrc")
		if err := os.WriteFile(netrc, []byte("machine 127.0.0.1 login ci password "+tok.Token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := testsupport.NixCommandEnv(t.Context(), []string{"XDG_CACHE_HOME=" + t.TempDir()}, "nix", "copy", "--from", src,
			"--to", srv.CacheURL+"?compression=zstd", "--option", "netrc-file", netrc, c.Top)
		return err
	}
	narinfo := func(p string) string {
		return filepath.Join(srv.Config.DataDir, "cache", filepath.Base(p)[:32]+".narinfo")
	}
	if err := push(auth.RoleRead); err == nil {
		t.Fatal("a read token uploaded")
	}
	for _, p := range c.All {
		if _, err := os.Stat(narinfo(p)); err == nil {
			t.Errorf("%s stored from a read token's upload", p)
		}
	}
	if err := push(auth.RoleTrigger); err != nil {
		t.Fatalf("upload with a trigger token: %v", err)
	}
	for _, p := range c.All {
		if _, err := os.Stat(narinfo(p)); err != nil {
			t.Errorf("uploaded %s: %v", p, err)
		}
	}
}

// closureOutsideSystemStore builds a closure and moves it into a local
// store of its own: the server serves the system store, so after this only
// an upload can make its cache have the closure.
func closureOutsideSystemStore(t *testing.T) (testsupport.Closure, string) {
	t.Helper()
	c := testsupport.BuildClosure(t)
	src := testsupport.NewLocalStore(t)
	if _, err := testsupport.NixCommand(t.Context(), "nix", "copy", "--no-check-sigs", "--to", src, c.Top); err != nil {
		t.Fatal(err)
	}
	if _, err := testsupport.NixCommand(t.Context(), append([]string{"nix-store", "--delete"}, c.All...)...); err != nil {
		t.Fatal(err)
	}
	return c, src
}
