// Package demo creates the small local flake repository `make run`
// registers, so a newcomer sees a real build succeed within a minute.
package demo

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/crystal-forge/crystal-forge/internal/command"
	"github.com/crystal-forge/crystal-forge/internal/config"
)

const flake = `{
  description = "Crystal Forge demo: two tiny packages built with /bin/sh, no nixpkgs needed";
  outputs = { self }:
    let
      system = %q;
      mk = name: script: derivation {
        inherit name system;
        builder = "/bin/sh";
        args = [ "-c" script ];
        PATH = "/usr/bin:/bin";
      };
    in {
      packages.${system} = {
        hello = mk "hello" ''
          mkdir -p $out/bin
          printf '#!/bin/sh\necho "Hello from Crystal Forge"\n' > $out/bin/hello
          chmod +x $out/bin/hello
          echo "built hello"
        '';
        greeting = mk "greeting" ''
          echo "Built by Crystal Forge" > $out
        '';
        default = self.packages.${system}.hello;
      };
    };
}
`

// NixConfig returns the NIX_CONFIG for the demo's builds: the user's
// settings (base) followed by what makes the demo offline-safe. No
// substituters, so nothing waits on a network that may not be there, and no
// sandbox, since the demo's builder is the host's /bin/sh (Debian's Nix
// sandboxes by default and would not find it).
func NixConfig(base string) string {
	const demo = "substituters =\nsandbox = false"
	if strings.TrimSpace(base) == "" {
		return demo
	}
	return base + "\n" + demo
}

// Ensure creates (once) a git repository with a demo flake under dataDir
// and returns it as a repository to build.
func Ensure(ctx context.Context, dataDir, system string) (config.Repository, error) {
	dir := filepath.Join(dataDir, "demo", "hello-flake")
	repo := config.Repository{Name: "demo", URL: dir, Branch: "main"}
	if _, err := os.Stat(filepath.Join(dir, ".git")); err == nil {
		return repo, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return repo, fmt.Errorf("demo: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), fmt.Appendf(nil, flake, system), 0o644); err != nil {
		return repo, fmt.Errorf("demo: %w", err)
	}
	env := []string{"GIT_AUTHOR_NAME=Crystal Forge", "GIT_AUTHOR_EMAIL=demo@crystal-forge.invalid", "GIT_COMMITTER_NAME=Crystal Forge", "GIT_COMMITTER_EMAIL=demo@crystal-forge.invalid"}
	for _, args := range [][]string{{"init", "-q", "-b", "main"}, {"add", "flake.nix"}, {"commit", "-q", "-m", "Demo flake"}} {
		if _, err := command.Output(ctx, command.Cmd{Dir: dir, Env: env}, "git", args...); err != nil {
			return repo, fmt.Errorf("demo: %w", err)
		}
	}
	return repo, nil
}
