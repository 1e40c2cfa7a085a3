package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/crystal-forge/crystal-forge/internal/agent"
	"github.com/crystal-forge/crystal-forge/internal/signing"
)

func runAgent(ctx context.Context, args []string, stderr io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg                           agent.Config
		serverKeys, subs, trustedKeys stringList
	)
	fs.StringVar(&cfg.ServerURL, "server", "", "Crystal Forge server URL, e.g. https://forge.example.com (required)")
	fs.StringVar(&cfg.Host, "host", "", "host name reported to the server (default: the hostname)")
	fs.StringVar(&cfg.KeyFile, "key-file", agent.DefaultKeyFile, "the agent's secret key, created on first start")
	fs.Var(&serverKeys, "server-key", "public key (name:base64) the server signs replies with, i.e. its cache key; repeatable; required")
	fs.StringVar(&cfg.CurrentSystem, "current-system", agent.DefaultCurrentSystem, "symlink to the running system")
	fs.StringVar(&cfg.Profile, "profile", agent.DefaultProfile, "system profile that deploys add generations to")
	fs.DurationVar(&cfg.Interval, "interval", agent.DefaultInterval, "time between heartbeats")
	jitter := fs.Duration("jitter", agent.DefaultJitter, "random spread of each wait, ± (0 disables)")
	fs.Var(&subs, "substituter", "binary cache URL to copy closures from; repeatable, tried in order")
	fs.Var(&trustedKeys, "trusted-public-key", "key (name:base64) a copied closure must be signed by; repeatable; needed for deploys")
	fs.StringVar(&cfg.StoreRoot, "store-root", "", "root of a chroot Nix store to deploy into (for tests; default: the system store)")
	fs.StringVar(&cfg.SysRoot, "sys-root", "/", "directory to read hardware facts under")
	fs.BoolVar(&cfg.DryRun, "dry-run", false, "report what a deploy would do instead of doing it")
	fs.DurationVar(&cfg.ActivationTimeout, "activation-timeout", agent.DefaultActivationTimeout,
		"stop switch-to-configuration after this long and roll back (negative: no limit)")
	once := fs.Bool("once", false, "send one heartbeat, act on the answer, and exit")
	var ts agentTailnetFlags
	ts.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if cfg.ServerURL == "" {
		return errors.New("agent: --server is required (the Crystal Forge server's URL)")
	}
	if len(serverKeys) == 0 {
		return errors.New("agent: --server-key is required (the server's public cache key, name:base64): the agent refuses replies it cannot verify")
	}
	for _, s := range serverKeys {
		k, err := signing.ParsePublicKey(s)
		if err != nil {
			return fmt.Errorf("agent: --server-key %q: %w", s, err)
		}
		cfg.ServerKeys = append(cfg.ServerKeys, k)
	}
	for _, s := range trustedKeys {
		if _, err := signing.ParsePublicKey(s); err != nil {
			return fmt.Errorf("agent: --trusted-public-key %q: %w", s, err)
		}
	}
	cfg.Jitter = *jitter
	if cfg.Jitter == 0 {
		cfg.Jitter = -1 // Config's zero means the default
	}
	cfg.Substituters, cfg.TrustedPublicKeys = subs, trustedKeys
	cfg.Version, cfg.Logger = version, log
	node, err := ts.apply(ctx, &cfg, log)
	if err != nil {
		return err
	}
	if node != nil {
		defer closeLogged(log, "tailnet node", node)
	}

	a, err := agent.New(cfg)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if *once {
		return a.RunOnce(ctx)
	}
	return a.Run(ctx)
}
