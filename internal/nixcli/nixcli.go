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
	return n.run(ctx, dir, log, log, "nix", append(features, args...), "nix "+firstArgs(args))
}

// Output runs `nix <args>` and returns stdout; stderr goes to log.
func (n *Nix) Output(ctx context.Context, dir string, log io.Writer, args ...string) ([]byte, error) {
	var out strings.Builder
	err := n.run(ctx, dir, &out, log, "nix", append(features, args...), "nix "+firstArgs(args))
	return []byte(out.String()), err
}

// Legacy runs an old-style command (nix-build) in dir, streaming to log.
func (n *Nix) Legacy(ctx context.Context, dir string, log io.Writer, name string, args ...string) error {
	return n.run(ctx, dir, log, log, name, args, name)
}

// run runs a command, keeping the end of its stderr so that a failure
// reports Nix's own error message rather than only an exit status.
func (n *Nix) run(ctx context.Context, dir string, stdout, stderr io.Writer, name string, args []string, what string) error {
	var tail tailBuffer
	cmd := command.New(ctx, command.Cmd{Dir: dir, Env: n.Env, Stdout: stdout, Stderr: io.MultiWriter(stderr, &tail)}, name, args...)
	if err := cmd.Run(); err != nil {
		return &Error{Command: what, Message: ErrorMessage(tail.String()), Err: err}
	}
	return nil
}

// Error is a failed nix command: Message is what Nix said (its "error:"
// lines), Err the exit status.
type Error struct {
	Command string
	Message string
	Err     error
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("%s: %v", e.Command, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Command, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// tailBuffer keeps the last tailSize bytes written to it.
type tailBuffer struct{ b []byte }

const tailSize = 64 << 10

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > tailSize {
		t.b = append(t.b[:0], t.b[len(t.b)-tailSize:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }

// ansiRE matches terminal colour codes, which Nix adds to some messages.
var ansiRE = regexp.MustCompile(`\x1b\[[0-9;]*[A-Za-z]`)

// maxMessageLines bounds an error message: an evaluation error's trace can
// run to hundreds of lines, and its first lines say what went wrong.
const maxMessageLines = 40

// ErrorMessage extracts Nix's error messages from its stderr: each line
// starting "error:" with its indented (or blank) continuation lines, in
// order, leaving out builders' output and progress lines between them.
func ErrorMessage(stderr string) string {
	var out []string
	in := false
	for _, line := range strings.Split(ansiRE.ReplaceAllString(stderr, ""), "\n") {
		line = strings.TrimRight(line, "\r ")
		switch {
		case strings.HasPrefix(line, "error:"):
			in = true
		case in && (line == "" || strings.HasPrefix(line, " ")):
		default:
			in = false
		}
		if in && len(out) < maxMessageLines {
			out = append(out, line)
		}
	}
	return strings.TrimSpace(strings.Join(out, "\n"))
}

// builderRE and dependencyRE match the derivations Nix names when a build
// fails: the one whose builder failed, and the one that needed it.
var (
	builderRE    = regexp.MustCompile(`error: builder for '(/nix/store/[^']+\.drv)' failed`)
	dependencyRE = regexp.MustCompile(`dependencies of derivation '(/nix/store/[^']+\.drv)' failed to build`)
)

// FailedDerivations returns, from a Nix error message, the derivation that
// was asked for (named when a dependency of it failed) and the derivations
// whose builders failed. Either may be empty: an evaluation error names no
// derivation.
func FailedDerivations(message string) (top string, builders []string) {
	for _, m := range builderRE.FindAllStringSubmatch(message, -1) {
		builders = append(builders, m[1])
	}
	if m := dependencyRE.FindAllStringSubmatch(message, -1); len(m) > 0 {
		top = m[len(m)-1][1]
	} else if len(builders) == 1 {
		top = builders[0]
	}
	return top, builders
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
