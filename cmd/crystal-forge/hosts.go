package main

// The fleet commands: `hosts` lists the fleet, `host ...` shows and
// manages one host. They are clients of a server's API, like trigger.

import (
	"context"
	"flag"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/fleet"
)

const hostUsage = `usage: crystal-forge host <command> [--server URL] ...

commands:
  show NAME                        details: state, target error, deployments, events, audit
  add NAME --key KEY [--policy manual|pinned|auto] [--target STOREPATH] [--repo REPO] [--config NAME]
                                   pre-register a host with its agent's public key (approved)
  approve NAME                     admit a host that enrolled on first contact
  set-target NAME STOREPATH        deploy STOREPATH to the host (policy becomes manual)
  set-policy NAME manual|pinned|auto [--target STOREPATH] [--repo REPO] [--config NAME]
                                   change what decides the host's target
  remove NAME                      delete the host and its history (the audit log keeps it)
  rekey NAME --key KEY             give the host a new agent key, approved (a reinstall,
                                   a leaked key, or a name an impostor enrolled first)
`

// hostsNow is the clock the fleet commands show ages with (tests fix it).
var hostsNow = time.Now

// runHosts lists the fleet.
func runHosts(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("hosts", flag.ContinueOnError)
	fs.SetOutput(stderr)
	api := addAPIFlags(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	hosts, err := api.client().Hosts(ctx)
	if err != nil {
		return err
	}
	if len(hosts) == 0 {
		fmt.Fprintln(stdout, "no hosts: add one with `crystal-forge host add`, or start an agent (it enrols pending approval)")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tSTATUS\tPOLICY\tCURRENT\tDESIRED\tLAST-SEEN\tDRIFT\tLAST-DEPLOY\tALERTS")
	for _, h := range hosts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.Name, h.Status, hostPolicy(h.Host, false), shortStorePath(h.Current),
			shortStorePath(h.Desired), hostLastSeen(h), orDash(h.Drift), fmtLastDeploy(h.LastDeployment), hostAlerts(h))
	}
	return tw.Flush()
}

// runHost dispatches `host <command>`.
func runHost(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, hostUsage)
		return errUsage
	}
	switch sub, rest := args[0], args[1:]; sub {
	case "show":
		return runHostShow(ctx, rest, stdout, stderr)
	case "add":
		return runHostAdd(ctx, rest, stdout, stderr)
	case "approve":
		return runHostApprove(ctx, rest, stdout, stderr)
	case "set-target":
		return runHostSetTarget(ctx, rest, stdout, stderr)
	case "set-policy":
		return runHostSetPolicy(ctx, rest, stdout, stderr)
	case "remove":
		return runHostRemove(ctx, rest, stdout, stderr)
	case "rekey":
		return runHostRekey(ctx, rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, hostUsage)
		return nil
	default:
		fmt.Fprintf(stderr, "crystal-forge host: unknown command %q\n\n%s", sub, hostUsage)
		return errUsage
	}
}

// hostFlags is a flag set with --server and --token for `host <name>`.
func hostFlags(name string, stderr io.Writer) (*flag.FlagSet, apiFlags) {
	fs := flag.NewFlagSet("host "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs, addAPIFlags(fs)
}

// hostPolicyFlags adds --target, --repo and --config.
func hostPolicyFlags(fs *flag.FlagSet, p *fleet.Policy) {
	fs.StringVar(&p.Target, "target", "", "target store path (manual, pinned)")
	fs.StringVar(&p.Repository, "repo", "", "repository whose builds an auto host follows")
	fs.StringVar(&p.Configuration, "config", "", "nixosConfigurations attribute an auto host follows (default: the host's name)")
}

func runHostShow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, api := hostFlags("show", stderr)
	pos, err := positional(fs, args, 1, "host show [--server URL] NAME", stderr)
	if err != nil {
		return err
	}
	h, err := api.client().Host(ctx, pos[0])
	if err != nil {
		return err
	}
	return printHost(stdout, h)
}

func runHostAdd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, api := hostFlags("add", stderr)
	key := fs.String("key", "", "the agent's public key, name:base64 (required)")
	var p fleet.Policy
	fs.StringVar(&p.Policy, "policy", db.PolicyManual, "manual, pinned or auto")
	hostPolicyFlags(fs, &p)
	pos, err := positional(fs, args, 1, "host add [--server URL] NAME --key KEY [--policy P] [--target STOREPATH] [--repo REPO] [--config NAME]", stderr)
	if err != nil {
		return err
	}
	if *key == "" {
		fmt.Fprintln(stderr, "host add: --key is required (the agent prints its public key)")
		return errUsage
	}
	if err := checkPinned(p, stderr); err != nil {
		return err
	}
	h, err := api.client().AddHost(ctx, pos[0], *key, p)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: added, %s, policy %s\n", h.Name, h.Status, hostPolicy(h, true))
	return nil
}

func runHostApprove(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, api := hostFlags("approve", stderr)
	pos, err := positional(fs, args, 1, "host approve [--server URL] NAME", stderr)
	if err != nil {
		return err
	}
	if err := api.client().ApproveHost(ctx, pos[0]); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: approved\n", pos[0])
	return nil
}

func runHostSetTarget(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, api := hostFlags("set-target", stderr)
	pos, err := positional(fs, args, 2, "host set-target [--server URL] NAME STOREPATH", stderr)
	if err != nil {
		return err
	}
	if err := api.client().SetTarget(ctx, pos[0], pos[1]); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: policy manual, target %s\n(verified and sent at the host's next heartbeat; `crystal-forge host show %s` tells if it was not)\n", pos[0], pos[1], pos[0])
	return nil
}

func runHostSetPolicy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, api := hostFlags("set-policy", stderr)
	var p fleet.Policy
	hostPolicyFlags(fs, &p)
	pos, err := positional(fs, args, 2, "host set-policy [--server URL] NAME manual|pinned|auto [--target STOREPATH] [--repo REPO] [--config NAME]", stderr)
	if err != nil {
		return err
	}
	p.Policy = pos[1]
	if err := checkPinned(p, stderr); err != nil {
		return err
	}
	if err := api.client().SetPolicy(ctx, pos[0], p); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: policy %s\n", pos[0], describeHostPolicy(pos[0], p, true))
	return nil
}

func runHostRemove(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, api := hostFlags("remove", stderr)
	pos, err := positional(fs, args, 1, "host remove [--server URL] NAME", stderr)
	if err != nil {
		return err
	}
	if err := api.client().RemoveHost(ctx, pos[0]); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: removed\n", pos[0])
	return nil
}

func runHostRekey(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, api := hostFlags("rekey", stderr)
	key := fs.String("key", "", "the agent's new public key, name:base64 (required)")
	pos, err := positional(fs, args, 1, "host rekey [--server URL] NAME --key KEY", stderr)
	if err != nil {
		return err
	}
	if *key == "" {
		fmt.Fprintln(stderr, "host rekey: --key is required (the agent prints its public key)")
		return errUsage
	}
	if err := api.client().RekeyHost(ctx, pos[0], *key); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: new key %s, approved\n", pos[0], *key)
	return nil
}

// checkPinned refuses, before anything is sent, a pinned policy without
// the target it pins to.
func checkPinned(p fleet.Policy, stderr io.Writer) error {
	if p.Policy == db.PolicyPinned && p.Target == "" {
		fmt.Fprintln(stderr, "a pinned host needs a target: add --target STOREPATH (the system to hold it at)")
		return errUsage
	}
	return nil
}

// printHost writes `host show`. Its error is a tabwriter's: the table is
// written out at Flush.
func printHost(w io.Writer, h *fleet.HostView) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	state := h.Status
	if h.LastSeen != nil {
		state += map[bool]string{true: ", online", false: ", offline"}[h.Online]
	}
	fmt.Fprintf(tw, "Host:\t%s (%s)\n", h.Name, state)
	fmt.Fprintf(tw, "Public key:\t%s\n", h.PublicKey)
	fmt.Fprintf(tw, "Policy:\t%s\n", hostPolicy(h.Host, true))
	fmt.Fprintf(tw, "Current:\t%s\n", orDash(h.Current))
	desired := orDash(h.Desired)
	if h.DesiredReason != "" {
		desired += " (" + h.DesiredReason + ")"
	}
	fmt.Fprintf(tw, "Desired:\t%s\n", desired)
	if h.DesiredDrv != "" {
		fmt.Fprintf(tw, "Derivation:\t%s\n", h.DesiredDrv)
	}
	if h.TargetError != "" {
		fmt.Fprintf(tw, "Not sent:\t%s\n", h.TargetError)
	}
	drift := "in sync"
	switch {
	case h.Drift != "":
		drift = h.Drift
	case h.Desired == "":
		drift = "-"
	}
	fmt.Fprintf(tw, "Drift:\t%s\n", drift)
	seen := "never"
	if h.LastSeen != nil {
		seen = fmt.Sprintf("%s (%s)", fmtLocal(*h.LastSeen), hostLastSeen(h))
		if h.Remote != "" {
			seen += " from " + h.Remote
		}
		if h.Agent != "" {
			seen += ", agent " + h.Agent
		}
	}
	fmt.Fprintf(tw, "Last seen:\t%s\n", seen)
	fmt.Fprintf(tw, "Fingerprint:\t%s\n", orDash(h.Fingerprint))
	fmt.Fprintf(tw, "Registered:\t%s\n", fmtLocal(h.CreatedAt))
	if err := tw.Flush(); err != nil {
		return err
	}

	section := func(title string, n int) bool {
		fmt.Fprintf(w, "\n%s:\n", title)
		if n == 0 {
			fmt.Fprintln(w, "  none")
		}
		return n > 0
	}
	if section("Alerts", len(h.Alerts)) {
		for _, a := range h.Alerts {
			fmt.Fprintf(w, "  %s  %s: %s\n", fmtLocal(a.At), a.Kind, a.Detail)
		}
	}
	if section("Deployments", len(h.Deployments)) {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  REPORTED\tSTATUS\tDURATION\tTARGET\tPREVIOUS\tERROR")
		for _, d := range h.Deployments {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", fmtLocal(d.ReportedAt), d.Status, fmtDurationMS(d.DurationMS),
				shortStorePath(d.Target), shortStorePath(d.Previous), orDash(d.Error))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if section("Events", len(h.Events)) {
		for _, e := range h.Events {
			fmt.Fprintf(w, "  %s  %s: %s\n", fmtLocal(e.At), e.Kind, e.Detail)
		}
	}
	if section("Heartbeats", len(h.Heartbeats)) {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  FIRST\tLAST\tCOUNT\tCURRENT\tFINGERPRINT")
		for _, b := range h.Heartbeats {
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\n", fmtLocal(b.FirstAt), fmtLocal(b.LastAt), b.Count, shortStorePath(b.Current), orDash(b.Fingerprint))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if section("Audit", len(h.Audit)) {
		for _, a := range h.Audit {
			fmt.Fprintf(w, "  %s  %s %s: %s (from %s)\n", fmtLocal(a.At), a.Actor, a.Action, a.Detail, a.Remote)
		}
	}
	return nil
}

// shortStorePath shows a store path as its name and the start of its hash:
// /nix/store/ef01abcd…-nixos-system-chesty-25.05 is
// "nixos-system-chesty-25.05 (ef01abcd)".
func shortStorePath(p string) string {
	if p == "" {
		return "-"
	}
	hash, name, ok := strings.Cut(path.Base(p), "-")
	if !ok || len(hash) != 32 || name == "" {
		return p
	}
	return fmt.Sprintf("%s (%s)", name, hash[:8])
}

func hostPolicy(h *db.Host, withTarget bool) string {
	return describeHostPolicy(h.Name, fleet.Policy{Policy: h.Policy, Target: h.Target, Repository: h.Repository, Configuration: h.Configuration}, withTarget)
}

// describeHostPolicy is "manual", "pinned" or "auto(<repo>#<configuration>)";
// withTarget adds a manual or pinned target: "pinned(<short path>)".
func describeHostPolicy(host string, p fleet.Policy, withTarget bool) string {
	switch p.Policy {
	case db.PolicyAuto:
		conf := p.Configuration
		if conf == "" {
			conf = host
		}
		return fmt.Sprintf("auto(%s#%s)", p.Repository, conf)
	case db.PolicyManual, db.PolicyPinned:
		if withTarget && p.Target != "" {
			return fmt.Sprintf("%s(%s)", p.Policy, shortStorePath(p.Target))
		}
	}
	return orDash(p.Policy)
}

func hostLastSeen(h *fleet.HostView) string {
	if h.LastSeen == nil {
		return "never"
	}
	s := agoString(hostsNow().Sub(*h.LastSeen))
	if !h.Online {
		s += " (offline)"
	}
	return s
}

// agoString is a rough age: "12s ago", "5m ago", "3h ago", "2d ago".
func agoString(d time.Duration) string {
	switch {
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d/time.Hour))
	default:
		return fmt.Sprintf("%dd ago", int(d/(24*time.Hour)))
	}
}

func fmtLastDeploy(d *db.Deployment) string {
	if d == nil {
		return "-"
	}
	return d.Status + " " + fmtDurationMS(d.DurationMS)
}

func fmtDurationMS(ms int64) string {
	d := time.Duration(ms) * time.Millisecond
	if d >= time.Second {
		d = d.Round(100 * time.Millisecond)
	}
	return d.String()
}

// hostAlerts lists the kinds of a host's alerts, and "target-not-sent" when
// its target failed verification.
func hostAlerts(h *fleet.HostView) string {
	var kinds []string
	for _, a := range h.Alerts {
		if !slices.Contains(kinds, a.Kind) {
			kinds = append(kinds, a.Kind)
		}
	}
	if h.TargetError != "" {
		kinds = append(kinds, "target-not-sent")
	}
	if len(kinds) == 0 {
		return "-"
	}
	return strings.Join(kinds, ",")
}

func fmtLocal(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05") }

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
