// Command crystal-forge is a Nix build server, binary cache and fleet
// controller in one binary. This package only wires subcommands to the
// packages under internal/.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage: crystal-forge <command> [flags]

commands:
  server   the all-in-one server: key init, binary cache, builds, API and web page
  builder  a build worker: takes build jobs from the server's database and runs them
  cache    serve the local Nix store as a signed binary cache
           (cache gc|pin|unpin|pins: collect its storage's garbage, keep paths)
  keygen   create the cache signing key if it does not exist; print the public key
  trigger  trigger a build of a repository (client of a server's API)
  status   show repositories and their latest builds
  logs     print or follow a repository's build log
  hosts    list the fleet's hosts: status, policy, current and desired system, drift, alerts
  host     show, add, approve a host; set its target or policy ("crystal-forge host help")
  token    create, list and revoke API tokens ("crystal-forge token help")
  agent    the fleet agent on a NixOS host: heartbeats, and switches to the system the server names
  version  print the version

Run "crystal-forge <command> -h" for a command's flags.
`

// version is set by the linker (-X main.version=...).
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "keygen":
		err = runKeygen(rest, stdout, stderr, log)
	case "cache":
		if ok, terr := runCacheTool(ctx, rest, stdout, stderr); ok {
			err = terr
		} else {
			err = runCache(ctx, rest, stderr, log)
		}
	case "server":
		err = runServer(ctx, rest, stdout, stderr, log)
	case "builder":
		err = runBuilder(ctx, rest, stderr, log)
	case "trigger":
		err = serverHint(runTrigger(ctx, rest, stdout, stderr))
	case "status":
		err = serverHint(runStatus(ctx, rest, stdout, stderr))
	case "logs":
		err = serverHint(runLogs(ctx, rest, stdout, stderr))
	case "hosts":
		err = serverHint(runHosts(ctx, rest, stdout, stderr))
	case "host":
		err = serverHint(runHost(ctx, rest, stdout, stderr))
	case "token":
		err = serverHint(runToken(ctx, rest, stdout, stderr))
	case "agent":
		err = runAgent(ctx, rest, stderr, log)
	case "version":
		fmt.Fprintln(stdout, "crystal-forge", version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "crystal-forge: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if errors.Is(err, errUsage) {
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "crystal-forge: %v\n", err)
		return 1
	}
	return 0
}

var errUsage = errors.New("usage")

// parse parses flags, mapping flag errors to errUsage (already reported).
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected arguments: %v\n", fs.Args())
		return errUsage
	}
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return fmt.Sprint(*l) }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }
