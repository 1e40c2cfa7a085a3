// Package config loads the server's settings: a TOML file, then the seed
// spec's environment variables, then validation that names the bad key.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/crystal-forge/crystal-forge/internal/fleetproto"
	"github.com/crystal-forge/crystal-forge/internal/push"
	"github.com/crystal-forge/crystal-forge/internal/signing"
)

// Repository is one git repository the server builds.
type Repository struct {
	Name   string `toml:"name"`
	URL    string `toml:"url"`
	Branch string `toml:"branch"`
	// WebhookSecret verifies push webhooks for this repository; empty uses
	// the server-wide secret.
	WebhookSecret string `toml:"webhook_secret"`
}

// Config is everything `crystal-forge server` needs.
type Config struct {
	DataDir   string `toml:"data_dir"`
	Hostname  string `toml:"hostname"`
	APIPort   int    `toml:"api_port"`
	CachePort int    `toml:"cache_port"`
	// PublicURL is the binary cache's URL as clients reach it, for /info
	// and the page; empty means http://<this host's FQDN>:<cache_port>.
	PublicURL   string `toml:"public_url"`
	Bind        string `toml:"bind"`
	EnableWebUI bool   `toml:"enable_web_ui"`
	KeyFile     string `toml:"key_file"`
	KeyOwner    string `toml:"key_owner"`
	// Database is a DSN: empty for SQLite under the data dir,
	// "sqlite:///path" or "postgres://...".
	Database string `toml:"database"`

	MaxParallelBuilds int      `toml:"max_parallel_builds"`
	BuildTimeout      Duration `toml:"build_timeout"`
	// GitTimeout fails a clone, fetch or ls-remote that prints nothing,
	// not even progress, for this long; 0 disables.
	GitTimeout Duration `toml:"git_timeout"`
	// PollInterval is how often branches are checked for new commits; 0 disables.
	PollInterval  Duration `toml:"poll_interval"`
	WebhookSecret string   `toml:"webhook_secret"`

	// System is the Nix system whose packages are built (default: this machine's).
	System string `toml:"system"`
	// HomeManagerFlake is the flake reference of home-manager used to test
	// homeManagerModules.
	HomeManagerFlake string `toml:"home_manager_flake"`
	// NixPath is NIX_PATH for builds (the spec sets nixpkgs=...).
	NixPath string `toml:"nix_path"`

	Repositories []Repository `toml:"repositories"`

	// FleetEnrolment is what happens when an unknown host heartbeats:
	// "pending" (recorded, awaiting an admin's approval) or "closed".
	FleetEnrolment string `toml:"fleet_enrolment"`
	// MaxPendingHosts caps hosts awaiting approval; EnrolmentsPerHour
	// bounds first contacts per source address.
	MaxPendingHosts   int `toml:"max_pending_hosts"`
	EnrolmentsPerHour int `toml:"enrolments_per_hour"`
	// Hosts are pre-registered fleet hosts, approved; the file is their
	// source of truth (re-applied at every start).
	Hosts []Host `toml:"hosts"`

	// Storage is the cache's storage backend for uploaded paths:
	// "dir:///path" or "s3://bucket?endpoint=...&region=..."; empty means
	// a directory "cache" under data_dir (docs/caches.md).
	Storage string `toml:"storage"`
	// UploadTokenFile lists the tokens that may upload to the cache (one
	// per line, or name:token); empty turns uploads off.
	UploadTokenFile string `toml:"upload_token_file"`

	// Push lists the destinations every build's outputs are pushed to,
	// with their closures (docs/caches.md).
	Push []Push `toml:"push"`
	// FleetCache names the push destination the fleet's agents pull from:
	// a host under the auto policy is handed a build only once its push
	// there succeeded. Empty: agents pull from this server's cache.
	FleetCache string `toml:"fleet_cache"`

	// RequireAuthForRead makes reading the API and page need an identity
	// (by default reading is open, as in the spec).
	RequireAuthForRead bool `toml:"require_auth_for_read"`
	// TrustLoopback makes connections from 127.0.0.1 and ::1 admin
	// (default true; see docs/security.md for reverse proxies).
	TrustLoopback bool `toml:"trust_loopback"`
	// AllowedHosts are extra names the API's Host header may carry, beside
	// localhost, IP addresses, hostname and this machine's names; "*" turns
	// the DNS-rebinding check off.
	AllowedHosts []string `toml:"allowed_hosts"`
	// MaxConnectionsPerClient bounds the connections one address may hold
	// open on the API and cache ports; 0 is unbounded.
	MaxConnectionsPerClient int `toml:"max_connections_per_client"`

	// Tailscale puts the server on a tailnet (docs/security.md).
	Tailscale Tailscale `toml:"tailscale"`
	// ACL maps tailnet logins and tags to roles.
	ACL []ACL `toml:"acl"`
}

// Tailscale is the [tailscale] section.
type Tailscale struct {
	// Enable joins the tailnet as a node of its own (tsnet) and serves the
	// API and the cache on it.
	Enable bool `toml:"enable"`
	// Hostname is the node's name (default: hostname).
	Hostname string `toml:"hostname"`
	// AuthKeyFile holds an auth key (default: $TS_AUTHKEY; none needed
	// once the state is saved).
	AuthKeyFile string `toml:"auth_key_file"`
	// StateDir keeps the node's identity (default: <data_dir>/tailscale).
	StateDir string `toml:"state_dir"`
	// ControlURL is the coordination server (default Tailscale's; set it
	// for Headscale).
	ControlURL string `toml:"control_url"`
	// TailnetOnly listens on the tailnet and nowhere else.
	TailnetOnly bool `toml:"tailnet_only"`
	// UseTailscaled identifies peers that arrive on a system tailscaled's
	// addresses with its LocalAPI WhoIs.
	UseTailscaled bool `toml:"use_tailscaled"`
	// TailscaledSocket is that tailscaled's LocalAPI socket (default: the
	// platform's, /var/run/tailscale/tailscaled.sock on Linux).
	TailscaledSocket string `toml:"tailscaled_socket"`
}

// ACL is one [[acl]] entry: who (a login, "tag:NAME" or "*") gets a role.
type ACL struct {
	Match string `toml:"match"`
	Role  string `toml:"role"`
}

// Push is a destination builds are pushed to.
type Push struct {
	Name string `toml:"name"`
	// URL is http(s)://… (another Crystal Forge cache), s3://bucket?…,
	// dir:///path or attic://<cache>.
	URL string `toml:"url"`
	// TokenFile holds the upload token of an http(s) destination.
	TokenFile string `toml:"token_file"`
}

// Host is a fleet host declared in the configuration.
type Host struct {
	Name          string `toml:"name"`
	PublicKey     string `toml:"public_key"`
	Policy        string `toml:"policy"` // manual (default), pinned, auto
	Target        string `toml:"target"`
	Repository    string `toml:"repository"`
	Configuration string `toml:"configuration"`
}

// Duration is a time.Duration written as "90s", "5m", "2h" in TOML.
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	if string(b) == "0" {
		d.Duration = 0
		return nil
	}
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Default returns the spec's defaults.
func Default() Config {
	return Config{
		DataDir:           "/var/lib/nix-build-server",
		Hostname:          "build-server",
		APIPort:           8000,
		CachePort:         5000,
		Bind:              "::",
		EnableWebUI:       true,
		KeyFile:           "/var/lib/harmonia/cache-key",
		MaxParallelBuilds: 2,
		BuildTimeout:      Duration{2 * time.Hour},
		GitTimeout:        Duration{10 * time.Minute},
		PollInterval:      Duration{5 * time.Minute},
		System:            DefaultSystem(),
		HomeManagerFlake:  "github:nix-community/home-manager",
		FleetEnrolment:    "pending",
		MaxPendingHosts:   100,
		EnrolmentsPerHour: 10,
		TrustLoopback:     true,
		// Nix opens up to 25 connections to a substituter (http-connections).
		MaxConnectionsPerClient: 64,
	}
}

// DefaultSystem maps the running platform to a Nix system name.
func DefaultSystem() string {
	arch := map[string]string{"amd64": "x86_64", "arm64": "aarch64", "386": "i686", "riscv64": "riscv64"}[runtime.GOARCH]
	if arch == "" {
		arch = runtime.GOARCH
	}
	return arch + "-" + runtime.GOOS
}

// Load reads the TOML file at path (none when empty), applies the
// environment (getenv, usually os.Getenv) and validates.
func Load(path string, getenv func(string) string) (*Config, error) {
	c := Default()
	if path != "" {
		md, err := toml.DecodeFile(path, &c)
		if err != nil {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
		if un := md.Undecoded(); len(un) > 0 {
			keys := make([]string, len(un))
			for i, k := range un {
				keys[i] = k.String()
			}
			return nil, fmt.Errorf("config %s: unknown key %s", path, strings.Join(keys, ", "))
		}
	}
	if err := c.applyEnv(getenv); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) applyEnv(getenv func(string) string) error {
	if v := getenv("BUILD_SERVER_DATA_DIR"); v != "" {
		c.DataDir = v
	}
	if v := getenv("BUILD_SERVER_HOSTNAME"); v != "" {
		c.Hostname = v
	}
	for _, p := range []struct {
		env string
		dst *int
	}{{"BUILD_SERVER_API_PORT", &c.APIPort}, {"BUILD_SERVER_CACHE_PORT", &c.CachePort}} {
		if v := getenv(p.env); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("environment %s=%q: not a port number", p.env, v)
			}
			*p.dst = n
		}
	}
	switch v := getenv("ENABLE_WEB_UI"); v {
	case "":
	case "1", "true", "yes":
		c.EnableWebUI = true
	case "0", "false", "no":
		c.EnableWebUI = false
	default:
		return fmt.Errorf("environment ENABLE_WEB_UI=%q: want 1 or 0", v)
	}
	return nil
}

var (
	// NameRE is what a repository name may be: it becomes a URL segment, a
	// file name and a log name, so nothing that could escape any of them.
	NameRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	branchRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$`)
	systemRE = regexp.MustCompile(`^[a-z0-9_]+-[a-z0-9_]+$`)
	// scpLikeRE is git's user@host:path form.
	scpLikeRE = regexp.MustCompile(`^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:`)
)

// ValidName reports whether s is an acceptable repository name.
func ValidName(s string) bool { return NameRE.MatchString(s) && !strings.Contains(s, "..") }

// Validate checks every setting and names the first bad key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: %s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.DataDir == "" {
		bad("data_dir", "must not be empty")
	} else if abs, err := filepath.Abs(c.DataDir); err != nil {
		bad("data_dir", "%v", err)
	} else {
		c.DataDir = abs
	}
	if c.Hostname == "" || strings.ContainsAny(c.Hostname, " \t:/") {
		bad("hostname", "%q is not a host name", c.Hostname)
	}
	for key, p := range map[string]int{"api_port": c.APIPort, "cache_port": c.CachePort} {
		if p <= 0 || p > 65535 {
			bad(key, "%d is not a port number", p)
		}
	}
	if c.PublicURL != "" {
		if u, err := url.Parse(c.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			bad("public_url", "%q: want the cache's URL as clients reach it, like http://forge.example.com:5000", c.PublicURL)
		} else {
			c.PublicURL = strings.TrimSuffix(c.PublicURL, "/")
		}
	}
	if c.APIPort == c.CachePort {
		bad("api_port", "equals cache_port (%d)", c.APIPort)
	}
	if c.KeyFile == "" {
		bad("key_file", "must not be empty")
	}
	if c.MaxParallelBuilds < 1 {
		bad("max_parallel_builds", "%d: must be at least 1", c.MaxParallelBuilds)
	}
	if c.BuildTimeout.Duration < 0 {
		bad("build_timeout", "must not be negative")
	}
	if c.GitTimeout.Duration < 0 {
		bad("git_timeout", "must not be negative")
	}
	if c.PollInterval.Duration < 0 || (c.PollInterval.Duration > 0 && c.PollInterval.Duration < time.Second) {
		bad("poll_interval", "%s: want 0 (off) or at least 1s", c.PollInterval)
	}
	if !systemRE.MatchString(c.System) {
		bad("system", "%q is not a Nix system like x86_64-linux", c.System)
	}
	if c.HomeManagerFlake == "" {
		bad("home_manager_flake", "must not be empty")
	}
	seen := map[string]bool{}
	for i, r := range c.Repositories {
		key := fmt.Sprintf("repositories[%d]", i)
		if !ValidName(r.Name) {
			bad(key+".name", "%q: use letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit)", r.Name)
		} else if seen[r.Name] {
			bad(key+".name", "%q is used twice", r.Name)
		}
		seen[r.Name] = true
		if err := validURL(r.URL); err != nil {
			bad(key+".url", "%q: %v", r.URL, err)
		}
		if !branchRE.MatchString(r.Branch) || strings.Contains(r.Branch, "..") || strings.HasSuffix(r.Branch, "/") || strings.HasSuffix(r.Branch, ".lock") {
			bad(key+".branch", "%q is not a branch name", r.Branch)
		}
	}
	switch c.FleetEnrolment {
	case "pending", "closed":
	default:
		bad("fleet_enrolment", "%q: want pending or closed", c.FleetEnrolment)
	}
	if c.MaxPendingHosts < 1 {
		bad("max_pending_hosts", "%d: must be at least 1 (use fleet_enrolment = \"closed\" to refuse unknown hosts)", c.MaxPendingHosts)
	}
	if c.EnrolmentsPerHour < 1 {
		bad("enrolments_per_hour", "%d: must be at least 1", c.EnrolmentsPerHour)
	}
	if c.MaxConnectionsPerClient < 0 {
		bad("max_connections_per_client", "%d: want 0 (unbounded) or more", c.MaxConnectionsPerClient)
	}
	if c.Tailscale.TailnetOnly && !c.Tailscale.Enable {
		bad("tailscale.tailnet_only", "needs tailscale.enable = true (else nothing would listen)")
	}
	if c.Tailscale.Hostname != "" && !fleetproto.ValidHostName(c.Tailscale.Hostname) {
		bad("tailscale.hostname", "%q is not a host name", c.Tailscale.Hostname)
	}
	if u := c.Tailscale.ControlURL; u != "" && !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") {
		bad("tailscale.control_url", "%q: want an http(s) URL", u)
	}
	for i, a := range c.ACL {
		key := fmt.Sprintf("acl[%d]", i)
		if a.Match == "" || strings.ContainsAny(a.Match, " \t") {
			bad(key+".match", "%q: want a login (alice@example.com), a tag (tag:ci) or \"*\"", a.Match)
		}
		switch a.Role {
		case "read", "trigger", "admin":
		default:
			bad(key+".role", "%q: want read, trigger or admin", a.Role)
		}
	}
	for i, h := range c.AllowedHosts {
		if h != "*" && (h == "" || strings.ContainsAny(h, " \t/:@")) {
			bad(fmt.Sprintf("allowed_hosts[%d]", i), "%q is not a host name (no port, no scheme)", h)
		}
	}
	// The same checks as the fleet API's, with its functions.
	seenHost := map[string]bool{}
	seenKey := map[string]int{}
	for i, h := range c.Hosts {
		key := fmt.Sprintf("hosts[%d]", i)
		if !fleetproto.ValidHostName(h.Name) {
			bad(key+".name", "%q is not a host name (letters, digits and '-', at most 63, like networking.hostName)", h.Name)
		} else if seenHost[h.Name] {
			bad(key+".name", "%q is used twice", h.Name)
		}
		seenHost[h.Name] = true
		if pk, err := signing.ParsePublicKey(h.PublicKey); err != nil {
			bad(key+".public_key", "%v", err)
		} else if j, dup := seenKey[pk.String()]; dup {
			bad(key+".public_key", "is also hosts[%d]'s key (%s); every agent has its own key", j, c.Hosts[j].Name)
		} else {
			seenKey[pk.String()] = i
		}
		if h.Target != "" && !isStorePath(h.Target) {
			bad(key+".target", "%q is not a store path like /nix/store/<hash>-<name>", h.Target)
		}
		if h.Configuration != "" && !fleetproto.ValidHostName(h.Configuration) {
			bad(key+".configuration", "%q is not a nixosConfigurations attribute name (letters, digits and '-')", h.Configuration)
		}
		switch h.Policy {
		case "", "manual":
		case "pinned":
			if h.Target == "" {
				bad(key+".target", "a pinned host needs a target store path")
			}
		case "auto":
			if _, ok := c.Repository(h.Repository); !ok {
				bad(key+".repository", "%q is not a configured repository", h.Repository)
			}
		default:
			bad(key+".policy", "%q: want manual, pinned or auto", h.Policy)
		}
	}
	seenPush := map[string]bool{}
	for i, p := range c.Push {
		key := fmt.Sprintf("push[%d]", i)
		if !ValidName(p.Name) {
			bad(key+".name", "%q: use letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit)", p.Name)
		} else if seenPush[p.Name] {
			bad(key+".name", "%q is used twice", p.Name)
		}
		seenPush[p.Name] = true
		kind, err := push.KindOf(p.URL)
		if err != nil {
			bad(key+".url", "%v", err)
		} else if p.TokenFile != "" && kind != push.KindHTTP {
			bad(key+".token_file", "is for http(s) destinations only: S3 credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, Attic's from `attic login`")
		}
	}
	if c.FleetCache != "" && !seenPush[c.FleetCache] {
		bad("fleet_cache", "%q is not the name of a [[push]] destination", c.FleetCache)
	}
	return errors.Join(errs...)
}

// isStorePath checks the shape of a store path. The store directory is a
// flag of the cache, not in this file, so the server checks the path
// against the real one again when it applies the hosts.
func isStorePath(p string) bool {
	return strings.HasPrefix(p, "/") && fleetproto.ValidStorePath(p, path.Dir(p))
}

// validURL accepts what git clones: URLs with a scheme, scp-like
// user@host:path, and absolute local paths. Never anything git could take
// for an option.
func validURL(s string) error {
	switch {
	case s == "":
		return errors.New("must not be empty")
	case strings.HasPrefix(s, "-"):
		return errors.New("must not start with '-'")
	case strings.ContainsAny(s, " \t\r\n"):
		return errors.New("must not contain whitespace")
	case strings.HasPrefix(s, "/"):
		return nil
	case strings.Contains(s, "://"):
		u, err := url.Parse(s)
		if err != nil {
			return err
		}
		switch u.Scheme {
		case "https", "http", "ssh", "git", "file":
			return nil
		}
		return fmt.Errorf("unsupported scheme %q", u.Scheme)
	case scpLikeRE.MatchString(s):
		return nil
	}
	return errors.New("want https://, ssh://, git://, file://, user@host:path or an absolute path")
}

// Repository returns the named repository.
func (c *Config) Repository(name string) (Repository, bool) {
	for _, r := range c.Repositories {
		if r.Name == name {
			return r, true
		}
	}
	return Repository{}, false
}
