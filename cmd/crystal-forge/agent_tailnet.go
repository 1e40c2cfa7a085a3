package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"

	"github.com/crystal-forge/crystal-forge/internal/agent"
	"github.com/crystal-forge/crystal-forge/internal/tailnet"
)

// agentTailnetFlags put the agent on the tailnet with tsnet, for hosts
// without a system tailscaled.
type agentTailnetFlags struct {
	enable                                bool
	hostname, stateDir, authKeyFile, ctrl string
}

func (f *agentTailnetFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&f.enable, "tailscale", false, "join the tailnet as a node of its own (tsnet) and reach the server and its cache over it")
	fs.StringVar(&f.hostname, "tailscale-hostname", "", "the agent's tailnet node name (default: <host>-agent)")
	fs.StringVar(&f.stateDir, "tailscale-state-dir", "/var/lib/crystal-forge-agent/tailscale", "where the node keeps its identity")
	fs.StringVar(&f.authKeyFile, "tailscale-auth-key-file", "", "file holding a Tailscale auth key (default: $TS_AUTHKEY; none needed once joined)")
	fs.StringVar(&f.ctrl, "tailscale-control-url", "", "coordination server (default Tailscale's; Headscale's URL)")
}

// apply joins the tailnet and points the agent at it: heartbeats go over
// the node's HTTP client, and each http:// substituter is reached through
// a local forwarder, since nix cannot use tsnet. The node lives until ctx
// ends.
func (f *agentTailnetFlags) apply(ctx context.Context, cfg *agent.Config, log *slog.Logger) (*tailnet.Node, error) {
	if !f.enable {
		return nil, nil
	}
	authKey, err := tailnet.ReadAuthKey(f.authKeyFile)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	hostname := f.hostname
	if hostname == "" {
		h := cfg.Host
		if h == "" {
			h, _ = os.Hostname()
			h, _, _ = strings.Cut(h, ".")
		}
		// Not the host's own name: a system tailscaled may hold that.
		hostname = h + "-agent"
	}
	if err := os.MkdirAll(f.stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: tailscale state directory: %w", err)
	}
	node, err := tailnet.Start(ctx, tailnet.Config{Hostname: hostname, AuthKey: authKey, StateDir: f.stateDir, ControlURL: f.ctrl, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	cfg.HTTPClient = node.HTTPClient()
	for i, s := range cfg.Substituters {
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "http" || isLoopbackHost(u.Hostname()) {
			continue
		}
		target := u.Host
		if u.Port() == "" {
			target = net.JoinHostPort(u.Hostname(), "80")
		}
		local, err := node.ForwardLocal(ctx, target, log)
		if err != nil {
			closeLogged(log, "tailnet node", node)
			return nil, fmt.Errorf("agent: forward %s over the tailnet: %w", s, err)
		}
		u.Host = local
		log.Info("substituter reached over the tailnet", "substituter", s, "local", u.String())
		cfg.Substituters[i] = u.String()
	}
	return node, nil
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
