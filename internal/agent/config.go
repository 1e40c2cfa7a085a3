package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/signing"
)

// Defaults for the zero values of Config.
const (
	DefaultKeyFile        = "/var/lib/crystal-forge-agent/agent-key"
	DefaultCurrentSystem  = "/run/current-system"
	DefaultProfile        = "/nix/var/nix/profiles/system"
	DefaultInterval       = 15 * time.Minute
	DefaultJitter         = time.Minute
	DefaultStoreDir       = "/nix/store"
	DefaultRequestTimeout = 30 * time.Second
	// DefaultActivationTimeout bounds one switch-to-configuration run: a
	// hung activation (a unit that never settles) is stopped and rolled
	// back instead of blocking the agent for good.
	DefaultActivationTimeout = 15 * time.Minute
)

// Config configures an Agent and its Deployer. Empty fields take the
// defaults above. Nix commands inherit the process environment as it is
// (NIX_CONFIG, NIX_REMOTE, XDG_CACHE_HOME, ...).
type Config struct {
	// ServerURL is the Crystal Forge server; heartbeats go to
	// ServerURL + fleetproto.Path.
	ServerURL string
	// Host is the name reported to the server (default: os.Hostname).
	Host string
	// KeyFile is the agent's ed25519 secret key, created on first start
	// (mode 0600, named after Host).
	KeyFile string
	// ServerKeys are the server keys the agent trusts (the server's
	// binary-cache key). Required: a reply no key verifies is refused.
	ServerKeys []*signing.PublicKey

	// CurrentSystem is the symlink to the running system.
	CurrentSystem string
	// Profile is the system profile that deploys add generations to.
	Profile string

	// Interval is the time between heartbeats; each wait is Interval plus
	// or minus a random duration up to Jitter. Zero Jitter means
	// DefaultJitter; a negative Jitter means none.
	Interval time.Duration
	Jitter   time.Duration

	// Substituters are binary caches to copy closures from, tried in
	// order. None means ServerCacheURL, when that is set.
	Substituters   []string
	ServerCacheURL string
	// TrustedPublicKeys ("name:base64") are the only keys whose signatures
	// make a copied path acceptable. A copy needs at least one.
	TrustedPublicKeys []string

	// StoreRoot, when set, is the root of a chroot Nix store: nix commands
	// get --store StoreRoot and store programs run from StoreRoot+path.
	StoreRoot string
	// StoreDir is the logical store directory (DefaultStoreDir).
	StoreDir string
	// SysRoot is the directory hardware facts are read under ("/").
	SysRoot string

	// DryRun reports what a deploy would do instead of doing it.
	DryRun bool
	// ActivationTimeout bounds each switch-to-configuration run (the new
	// system's, and the previous one's in a rollback); 0 means
	// DefaultActivationTimeout, negative means no limit.
	ActivationTimeout time.Duration

	// Version is the agent version sent with heartbeats.
	Version string
	// HTTPClient sends heartbeats (default: a new http.Client).
	HTTPClient *http.Client
	// RequestTimeout bounds one heartbeat round trip.
	RequestTimeout time.Duration
	Logger         *slog.Logger
}

// withDefaults returns c with defaults filled in and its formats checked.
// Whether the agent-only fields are present is checked by New.
func (c Config) withDefaults() (Config, error) {
	if c.Host == "" {
		h, err := os.Hostname()
		if err != nil {
			return c, fmt.Errorf("read hostname (set the host name explicitly): %w", err)
		}
		// The server knows hosts by their short name (networking.hostName);
		// a non-NixOS machine may report a fully qualified one.
		c.Host, _, _ = strings.Cut(h, ".")
	}
	if c.KeyFile == "" {
		c.KeyFile = DefaultKeyFile
	}
	if c.CurrentSystem == "" {
		c.CurrentSystem = DefaultCurrentSystem
	}
	if c.Profile == "" {
		c.Profile = DefaultProfile
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	switch {
	case c.Jitter == 0:
		c.Jitter = DefaultJitter
	case c.Jitter < 0:
		c.Jitter = 0
	}
	if c.StoreDir == "" {
		c.StoreDir = DefaultStoreDir
	}
	if c.SysRoot == "" {
		c.SysRoot = "/"
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.ActivationTimeout == 0 {
		c.ActivationTimeout = DefaultActivationTimeout
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}

	if c.Interval < 0 {
		return c, fmt.Errorf("interval %s is negative", c.Interval)
	}
	if c.Jitter >= c.Interval {
		return c, fmt.Errorf("jitter %s must be less than the interval %s", c.Jitter, c.Interval)
	}
	if c.StoreRoot != "" && !filepath.IsAbs(c.StoreRoot) {
		return c, fmt.Errorf("store root %q is not an absolute path", c.StoreRoot)
	}
	c.StoreDir = filepath.Clean(c.StoreDir)
	for _, k := range c.TrustedPublicKeys {
		if _, err := signing.ParsePublicKey(k); err != nil {
			return c, fmt.Errorf("trusted public key %q: %w", k, err)
		}
	}
	for _, s := range c.Substituters {
		if strings.TrimSpace(s) == "" {
			return c, errors.New("empty substituter URL")
		}
	}
	if c.ServerURL != "" {
		u, err := url.Parse(c.ServerURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return c, fmt.Errorf("server URL %q is not an http(s) URL", c.ServerURL)
		}
		c.ServerURL = strings.TrimRight(c.ServerURL, "/")
	}
	return c, nil
}

// substituters returns the caches to copy closures from.
func (c Config) substituters() []string {
	if len(c.Substituters) > 0 {
		return c.Substituters
	}
	if c.ServerCacheURL != "" {
		return []string{c.ServerCacheURL}
	}
	return nil
}
