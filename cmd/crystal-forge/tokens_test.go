package main

import (
	"strings"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/api"
	"github.com/crystal-forge/crystal-forge/internal/auth"
	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// The token commands against a server that does not trust loopback: an
// admin token creates a trigger token, which the CLI then uses from
// --token and from CRYSTAL_FORGE_TOKEN; once revoked, it is refused.
func TestTokenCommands(t *testing.T) {
	requireGit(t)
	f := testsupport.Flake{System: config.DefaultSystem(), Nonce: testsupport.Nonce(), Packages: []testsupport.FlakePackage{testsupport.GoodPackage("hello", 0)}}
	src := testsupport.NewGitRepo(t, map[string]string{"flake.nix": f.Nix()})
	srv := testsupport.StartBuildServer(t, testsupport.BuildServerConfig{
		Repositories: []config.Repository{testsupport.MainBranchRepo("app", src)},
		Auth:         api.AuthConfig{DistrustLoopback: true},
	})
	root, err := (&auth.Tokens{DB: srv.DB}).Create(t.Context(), "root", auth.RoleAdmin, 0, "test")
	if err != nil {
		t.Fatal(err)
	}
	S := "--server=" + srv.URL
	t.Setenv("CRYSTAL_FORGE_TOKEN", "")

	// Without a token nothing is created, and the error says so.
	code, out, errOut := cli(t, "token", "create", S, "--name", "ci", "--role", "trigger")
	if code != 1 || !strings.Contains(errOut, "401") || out != "" {
		t.Fatalf("token create without a token = %d %q %q", code, out, errOut)
	}
	code, out, errOut = cli(t, "token", "create", S, "--token", root.Token, "--name", "ci", "--role", "trigger", "--expires", "90d")
	tok := strings.TrimSpace(out)
	if code != 0 || !strings.HasPrefix(tok, auth.TokenPrefix) || strings.Count(out, "\n") != 1 || !strings.Contains(errOut, "shown once") {
		t.Fatalf("token create = %d %q %q", code, out, errOut)
	}
	if code, _, errOut := cli(t, "token", "create", S, "--token", root.Token, "--name", "ci", "--role", "read"); code != 1 || !strings.Contains(errOut, "revoke it first") {
		t.Fatalf("second token named ci = %d %q", code, errOut)
	}

	if code, _, errOut := cli(t, "trigger", S, "app"); code != 1 || !strings.Contains(errOut, "401") {
		t.Fatalf("trigger without a token = %d %q", code, errOut)
	}
	code, out, errOut = cli(t, "trigger", S, "--token", tok, "app")
	if code != 0 || !strings.Contains(out, "app: triggered") {
		t.Fatalf("trigger --token = %d %q %q", code, out, errOut)
	}
	// A trigger token cannot manage tokens.
	if code, _, errOut := cli(t, "token", "list", S, "--token", tok); code != 1 || !strings.Contains(errOut, "403") {
		t.Fatalf("token list with a trigger token = %d %q", code, errOut)
	}

	t.Setenv("CRYSTAL_FORGE_TOKEN", root.Token)
	code, out, errOut = cli(t, "token", "list", S)
	if code != 0 || !strings.Contains(out, "NAME") || strings.Contains(out, tok) {
		t.Fatalf("token list = %d %q %q", code, out, errOut)
	}
	var ciRow string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "ci ") {
			ciRow = l
		}
	}
	if f := strings.Fields(ciRow); len(f) < 4 || f[1] != "trigger" || strings.Contains(ciRow, "never  token:root") || !strings.Contains(ciRow, "token:root") {
		t.Fatalf("ci row %q: want role trigger, an expiry, a last use, created by token:root", ciRow)
	}
	if !strings.Contains(ciRow, time.Now().Add(90*24*time.Hour).Local().Format("2006-01-02")) {
		t.Errorf("ci row %q lacks the expiry date", ciRow)
	}
	if code, out, errOut := cli(t, "token", "revoke", S, "ci"); code != 0 || out != "ci: revoked\n" {
		t.Fatalf("token revoke = %d %q %q", code, out, errOut)
	}
	t.Setenv("CRYSTAL_FORGE_TOKEN", tok)
	if code, _, errOut := cli(t, "trigger", S, "app"); code != 1 || !strings.Contains(errOut, "unknown or revoked token") {
		t.Fatalf("trigger with the revoked token = %d %q", code, errOut)
	}
	if code, _, _ := cli(t, "token", "create", S); code != 2 {
		t.Errorf("token create without --name = %d, want 2 (usage)", code)
	}
}
