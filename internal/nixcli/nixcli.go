// Package nixcli runs the nix command line for the build orchestrator: one
// place that knows the flags, the experimental features and the version.
package nixcli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/crystal-forge/crystal-forge/internal/command"
)

// Nix runs nix commands with a fixed environment.
type Nix struct {
	// Env is added to every command's environment (NIX_PATH, NIX_CONFIG…).
	Env     []string
	Version string
}

var features = []string{"--extra-experimental-features", "nix-command flakes"}

// Detect finds nix on PATH and reads its version.
func Detect(ctx context.Context, env []string) (*Nix, error) {
	out, err := command.Output(ctx, command.Cmd{Env: env}, "nix", "--version")
	if err != nil {
		return nil, fmt.Errorf("nix not usable (install Nix; on Debian `apt-get install nix-bin`): %w", err)
	}
	v := regexp.MustCompile(`\d+\.\d+(\.\d+)?`).FindString(string(out))
	return &Nix{Env: env, Version: v}, nil
}

// Run runs `nix <args>` in dir, streaming output to log.
func (n *Nix) Run(ctx context.Context, dir string, log io.Writer, args ...string) error {
	cmd := command.New(ctx, command.Cmd{Dir: dir, Env: n.Env, Stdout: log, Stderr: log}, "nix", append(features, args...)...)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nix %s: %w", firstArgs(args), err)
	}
	return nil
}

// Output runs `nix <args>` and returns stdout; stderr goes to log.
func (n *Nix) Output(ctx context.Context, dir string, log io.Writer, args ...string) ([]byte, error) {
	var out strings.Builder
	cmd := command.New(ctx, command.Cmd{Dir: dir, Env: n.Env, Stdout: &out, Stderr: log}, "nix", append(features, args...)...)
	if err := cmd.Run(); err != nil {
		return []byte(out.String()), fmt.Errorf("nix %s: %w", firstArgs(args), err)
	}
	return []byte(out.String()), nil
}

// Legacy runs an old-style command (nix-build) in dir, streaming to log.
func (n *Nix) Legacy(ctx context.Context, dir string, log io.Writer, name string, args ...string) error {
	cmd := command.New(ctx, command.Cmd{Dir: dir, Env: n.Env, Stdout: log, Stderr: log}, name, args...)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func firstArgs(args []string) string {
	if len(args) > 2 {
		args = args[:2]
	}
	return strings.Join(args, " ")
}

// FlakeShow is the part of `nix flake show --json` the orchestrator reads.
type FlakeShow struct {
	Packages            map[string]map[string]json.RawMessage `json:"packages"`
	HomeManagerModules  json.RawMessage                       `json:"homeManagerModules"`
	NixosConfigurations map[string]json.RawMessage            `json:"nixosConfigurations"`
}

// ShowFlake evaluates the flake's output structure.
func (n *Nix) ShowFlake(ctx context.Context, dir string, log io.Writer) (*FlakeShow, error) {
	out, err := n.Output(ctx, dir, log, "flake", "show", "--json")
	if err != nil {
		return nil, err
	}
	var s FlakeShow
	if err := json.Unmarshal(out, &s); err != nil {
		return nil, fmt.Errorf("parse nix flake show --json: %w", err)
	}
	return &s, nil
}

// BuildResult is one element of `nix build --json`.
type BuildResult struct {
	DrvPath string            `json:"drvPath"`
	Outputs map[string]string `json:"outputs"`
}

// Build runs `nix build <installable> --print-build-logs --keep-going
// --json`, registering GC roots at outLink, and returns what was built.
func (n *Nix) Build(ctx context.Context, dir string, log io.Writer, outLink string, installable ...string) ([]BuildResult, error) {
	args := append([]string{"build"}, installable...)
	args = append(args, "--print-build-logs", "--keep-going", "--json", "--out-link", outLink)
	out, err := n.Output(ctx, dir, log, args...)
	if err != nil {
		return nil, err
	}
	var res []BuildResult
	if err := json.Unmarshal(out, &res); err != nil {
		return nil, fmt.Errorf("parse nix build --json: %w", err)
	}
	return res, nil
}
