package main

// `token create|list|revoke` manage the server's API tokens through its
// API, as admin: on the server itself loopback is admin, elsewhere pass an
// admin token (--token or CRYSTAL_FORGE_TOKEN).

import (
	"context"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

const tokenUsage = `usage: crystal-forge token <command> [--server URL] [--token TOKEN] ...

commands:
  create --name NAME --role read|trigger|admin [--expires 90d]
                  create a token; it is printed once, only its hash is stored
  list            name, role, created, expires, last used
  revoke NAME     delete a token: it stops working at once

These talk to the server's API as admin: run them on the server (loopback
is admin unless trust_loopback = false) or pass an admin token.
`

func runToken(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, tokenUsage)
		return errUsage
	}
	sub, rest := args[0], args[1:]
	fs := flag.NewFlagSet("token "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	api := addAPIFlags(fs)
	switch sub {
	case "create":
		name := fs.String("name", "", "the token's name, as the audit log shows it (required)")
		role := fs.String("role", "", "read, trigger or admin (required)")
		expires := fs.String("expires", "", "lifetime, like 90d or 12h (default: never)")
		if err := parse(fs, rest); err != nil {
			return err
		}
		if *name == "" || *role == "" {
			fmt.Fprintln(stderr, "usage: crystal-forge token create --name NAME --role read|trigger|admin [--expires 90d]")
			return errUsage
		}
		t, err := api.client().CreateToken(ctx, *name, *role, *expires)
		if err != nil {
			return fmt.Errorf("create token: %w", err)
		}
		fmt.Fprintln(stdout, t.Token)
		fmt.Fprintf(stderr, "token %s (role %s, expires %s): shown once, store it now; clients send it as --token or CRYSTAL_FORGE_TOKEN\n",
			t.Name, t.Role, fmtExpiry(t.ExpiresAt))
		return nil
	case "list":
		if err := parse(fs, rest); err != nil {
			return err
		}
		ts, err := api.client().Tokens(ctx)
		if err != nil {
			return fmt.Errorf("list tokens: %w", err)
		}
		if len(ts) == 0 {
			fmt.Fprintln(stdout, "no tokens: create one with `crystal-forge token create --name NAME --role ROLE`")
			return nil
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tROLE\tCREATED\tEXPIRES\tLAST-USED\tCREATED-BY")
		for _, t := range ts {
			used := "never"
			if t.LastUsedAt != nil {
				used = fmtLocal(*t.LastUsedAt)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", t.Name, t.Role, fmtLocal(t.CreatedAt), fmtExpiry(t.ExpiresAt), used, t.CreatedBy)
		}
		return tw.Flush()
	case "revoke":
		pos, err := positional(fs, rest, 1, "token revoke [--server URL] [--token TOKEN] NAME", stderr)
		if err != nil {
			return err
		}
		if err := api.client().RevokeToken(ctx, pos[0]); err != nil {
			return fmt.Errorf("revoke token %s: %w", pos[0], err)
		}
		fmt.Fprintf(stdout, "%s: revoked\n", pos[0])
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, tokenUsage)
		return nil
	}
	fmt.Fprintf(stderr, "crystal-forge token: unknown command %q\n\n%s", sub, tokenUsage)
	return errUsage
}

func fmtExpiry(t *time.Time) string {
	if t == nil {
		return "never"
	}
	s := fmtLocal(*t)
	if !t.After(hostsNow()) {
		s += " (expired)"
	}
	return s
}
