package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/crystal-forge/crystal-forge/internal/client"
)

func defaultServer() string {
	if s := os.Getenv("CRYSTAL_FORGE_SERVER"); s != "" {
		return s
	}
	return "http://localhost:8000"
}

// apiFlags are the flags of every API client command: --server and
// --token.
type apiFlags struct{ server, token *string }

func addAPIFlags(fs *flag.FlagSet) apiFlags {
	return apiFlags{
		server: fs.String("server", defaultServer(), "server URL (env CRYSTAL_FORGE_SERVER)"),
		// The default stays empty so -h never prints a token from the environment.
		token: fs.String("token", "", "API token, sent as Authorization: Bearer (env CRYSTAL_FORGE_TOKEN; none needed on the server itself)"),
	}
}

func (f apiFlags) client() *client.Client {
	c := client.New(*f.server)
	c.Token = *f.token
	if c.Token == "" {
		c.Token = os.Getenv("CRYSTAL_FORGE_TOKEN")
	}
	return c
}

// serverHint adds to the error of a server that did not answer how to name
// another one.
func serverHint(err error) error {
	if errors.Is(err, client.ErrUnreachable) {
		return fmt.Errorf("%w\nIs the server running there? Pass --server URL or set CRYSTAL_FORGE_SERVER to its API address", err)
	}
	return err
}

// positional parses args (see parseArgs) and requires exactly n
// positional arguments, printing "usage: crystal-forge USAGE" otherwise.
func positional(fs *flag.FlagSet, args []string, n int, usage string, stderr io.Writer) ([]string, error) {
	pos, err := parseArgs(fs, args)
	if err != nil {
		return nil, err
	}
	if len(pos) != n {
		fmt.Fprintln(stderr, "usage: crystal-forge "+usage)
		return nil, errUsage
	}
	return pos, nil
}

// parseArgs parses flags that may come before or after the positional
// arguments ("logs REPO -n 5" as well as "logs -n 5 REPO").
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if err == flag.ErrHelp {
				return nil, err
			}
			return nil, errUsage
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func runTrigger(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("trigger", flag.ContinueOnError)
	fs.SetOutput(stderr)
	api := addAPIFlags(fs)
	follow := fs.Bool("f", false, "follow the build's log until it ends; exit 1 if it fails")
	pos, err := positional(fs, args, 1, "trigger [--server URL] [-f] REPOSITORY", stderr)
	if err != nil {
		return err
	}
	c := api.client()
	r, err := c.Trigger(ctx, pos[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %s (build %d)\n", pos[0], r.Status, r.BuildID)
	if !*follow {
		return nil
	}
	return followBuild(ctx, c, r.BuildID, stdout)
}

func followBuild(ctx context.Context, c *client.Client, id int64, stdout io.Writer) error {
	status, err := c.Follow(ctx, id, stdout)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "build %d: %s\n", id, status)
	if status == "success" {
		return nil
	}
	// Say what failed, so a CI log shows it without a trip to the page.
	b, err := c.Build(ctx, id)
	if err != nil {
		return fmt.Errorf("build %d %s (reading its results: %v)", id, status, err)
	}
	for _, r := range b.Results {
		if r.Status != "failed" {
			continue
		}
		fmt.Fprintf(stdout, "failed: %s (%s)", r.Attr, r.Kind)
		if r.DrvPath != "" {
			fmt.Fprintf(stdout, " %s", r.DrvPath)
		}
		fmt.Fprintf(stdout, "\n  %s\n  log: %s/api/v1/builds/%d/results/%d/log\n",
			strings.ReplaceAll(r.Error, "\n", "\n  "), c.BaseURL, id, r.ID)
	}
	if b.Error != "" {
		return fmt.Errorf("build %d %s: %s", id, status, b.Error)
	}
	return fmt.Errorf("build %d %s", id, status)
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	api := addAPIFlags(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	c := api.client()
	repos, err := c.Repositories(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REPOSITORY\tBRANCH\tSTATUS\tCOMMIT\tBUILD\tATTRIBUTES\tSTARTED\tFINISHED")
	shown := 0
	for _, r := range repos {
		if len(pos) > 0 && !contains(pos, r.Name) {
			continue
		}
		shown++
		status, commit, id, attrs, started, finished := "never built", "-", "-", "-", "-", "-"
		if b := r.LatestBuild; b != nil {
			status, commit, id = b.Status, b.ShortCommit, fmt.Sprint(b.ID)
			attrs = fmt.Sprintf("%d built, %d failed, %d skipped", b.Counts.Built, b.Counts.Failed, b.Counts.Skipped)
			if commit == "" {
				commit = "-"
			}
			if b.StartedAt != nil {
				started = b.StartedAt.Local().Format("2006-01-02 15:04:05")
			}
			if b.FinishedAt != nil {
				finished = b.FinishedAt.Local().Format("2006-01-02 15:04:05")
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Branch, status, commit, id, attrs, started, finished)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(pos) > 0 && shown < len(pos) {
		return fmt.Errorf("repository not found: %v", pos)
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func runLogs(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("logs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	api := addAPIFlags(fs)
	n := fs.Int("n", 100, "number of lines (1-10000)")
	follow := fs.Bool("f", false, "follow the newest build's log until it ends")
	pos, err := positional(fs, args, 1, "logs [--server URL] [-n N] [-f] REPOSITORY", stderr)
	if err != nil {
		return err
	}
	c := api.client()
	if *follow {
		r, err := c.Repository(ctx, pos[0])
		if err != nil {
			return err
		}
		if r.LatestBuild == nil {
			return fmt.Errorf("%s has no builds yet", pos[0])
		}
		return followBuild(ctx, c, r.LatestBuild.ID, stdout)
	}
	lines, err := c.Logs(ctx, pos[0], *n)
	if err != nil {
		return err
	}
	for _, l := range lines {
		fmt.Fprintln(stdout, l)
	}
	return nil
}
