package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/signing"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func write(t *testing.T, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaults(t *testing.T) {
	c, err := Load("", env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "/var/lib/nix-build-server" || c.Hostname != "build-server" || c.APIPort != 8000 || c.CachePort != 5000 || !c.EnableWebUI {
		t.Errorf("defaults differ from the spec: %+v", c)
	}
	if c.KeyFile != "/var/lib/harmonia/cache-key" {
		t.Errorf("KeyFile = %q", c.KeyFile)
	}
	if !c.TrustLoopback || c.RequireAuthForRead {
		t.Errorf("auth defaults: trust_loopback %v, require_auth_for_read %v; want true, false", c.TrustLoopback, c.RequireAuthForRead)
	}
}

func TestTailscaleSettings(t *testing.T) {
	c, err := Load(write(t, `
[tailscale]
enable = true
hostname = "forge"
control_url = "https://headscale.example.com"
tailnet_only = true

[[acl]]
match = "alice@example.com"
role = "admin"

[[acl]]
match = "tag:ci"
role = "trigger"
`), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Tailscale.Enable || c.Tailscale.Hostname != "forge" || !c.Tailscale.TailnetOnly || len(c.ACL) != 2 || c.ACL[1].Match != "tag:ci" || c.ACL[1].Role != "trigger" {
		t.Errorf("tailscale settings not read: %+v %+v", c.Tailscale, c.ACL)
	}
}

func TestAuthSettings(t *testing.T) {
	c, err := Load(write(t, "trust_loopback = false\nrequire_auth_for_read = true\nallowed_hosts = [\"forge.example.com\"]\n"), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.TrustLoopback || !c.RequireAuthForRead || len(c.AllowedHosts) != 1 || c.AllowedHosts[0] != "forge.example.com" {
		t.Errorf("auth settings not read: %+v", c)
	}
}

func TestFileAndEnv(t *testing.T) {
	p := write(t, `
data_dir = "/srv/forge"
hostname = "forge"
api_port = 9000
poll_interval = "30s"
build_timeout = "0"

[[repositories]]
name = "nix-terminal"
url = "https://github.com/user/repo"
branch = "dev"

[[repositories]]
name = "local"
url = "/srv/git/local.git"
branch = "release/1.x"
`)
	c, err := Load(p, env(map[string]string{"BUILD_SERVER_API_PORT": "8100", "ENABLE_WEB_UI": "0", "BUILD_SERVER_HOSTNAME": "from-env"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.APIPort != 8100 || c.EnableWebUI || c.Hostname != "from-env" || c.DataDir != "/srv/forge" {
		t.Errorf("environment did not override the file: %+v", c)
	}
	if c.PollInterval.Duration != 30*time.Second || c.BuildTimeout.Duration != 0 {
		t.Errorf("durations: poll %v timeout %v", c.PollInterval, c.BuildTimeout)
	}
	if r, ok := c.Repository("local"); !ok || r.Branch != "release/1.x" {
		t.Errorf("Repository(local) = %+v, %v", r, ok)
	}
}

func TestPublicURL(t *testing.T) {
	c, err := Load(write(t, `public_url = "https://cache.example.com/nix/"`), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.PublicURL != "https://cache.example.com/nix" {
		t.Errorf("PublicURL = %q, want it without the trailing slash", c.PublicURL)
	}
}

func TestErrorsNameTheKey(t *testing.T) {
	tests := []struct {
		name, toml string
		env        map[string]string
		want       string
	}{
		{"unknown key", `colour = "blue"`, nil, "unknown key colour"},
		{"bad toml", `api_port = `, nil, "config"},
		{"bad repo name", "[[repositories]]\nname = \"../etc\"\nurl = \"/x\"\nbranch = \"main\"", nil, "repositories[0].name"},
		{"slash in name", "[[repositories]]\nname = \"a/b\"\nurl = \"/x\"\nbranch = \"main\"", nil, "repositories[0].name"},
		{"duplicate", "[[repositories]]\nname = \"a\"\nurl = \"/x\"\nbranch = \"main\"\n[[repositories]]\nname = \"a\"\nurl = \"/y\"\nbranch = \"main\"", nil, "repositories[1].name: \"a\" is used twice"},
		{"option url", "[[repositories]]\nname = \"a\"\nurl = \"--upload-pack=evil\"\nbranch = \"main\"", nil, "repositories[0].url"},
		{"bad branch", "[[repositories]]\nname = \"a\"\nurl = \"/x\"\nbranch = \"-f\"", nil, "repositories[0].branch"},
		{"missing branch", "[[repositories]]\nname = \"a\"\nurl = \"/x\"", nil, "repositories[0].branch"},
		{"port env", ``, map[string]string{"BUILD_SERVER_CACHE_PORT": "http"}, "BUILD_SERVER_CACHE_PORT"},
		{"port range", `api_port = 70000`, nil, "api_port"},
		{"same ports", `api_port = 5000`, nil, "equals cache_port"},
		{"web ui env", ``, map[string]string{"ENABLE_WEB_UI": "maybe"}, "ENABLE_WEB_UI"},
		{"poll", `poll_interval = "10ms"`, nil, "poll_interval"},
		{"duration", `build_timeout = "soon"`, nil, "build_timeout"},
		{"parallel", `max_parallel_builds = 0`, nil, "max_parallel_builds"},
		{"pending cap", `max_pending_hosts = 0`, nil, "max_pending_hosts"},
		{"enrol rate", `enrolments_per_hour = -1`, nil, "enrolments_per_hour"},
		{"tailnet only without tailscale", "[tailscale]\ntailnet_only = true", nil, "tailscale.tailnet_only"},
		{"acl role", "[[acl]]\nmatch = \"*\"\nrole = \"root\"", nil, "acl[0].role"},
		{"acl match", "[[acl]]\nmatch = \"\"\nrole = \"read\"", nil, "acl[0].match"},
		{"control url", "[tailscale]\nenable = true\ncontrol_url = \"headscale:8080\"", nil, "tailscale.control_url"},
		{"allowed host with port", `allowed_hosts = ["forge:8000"]`, nil, "allowed_hosts[0]"},
		{"allowed host url", `allowed_hosts = ["http://forge"]`, nil, "allowed_hosts[0]"},
		{"git timeout", `git_timeout = "-1s"`, nil, "git_timeout"},
		{"public url without scheme", `public_url = "forge.example.com:5000"`, nil, "public_url"},
		{"public url with a query", `public_url = "http://forge.example.com:5000/?x=1"`, nil, "public_url"},
		{"public url ftp", `public_url = "ftp://forge.example.com"`, nil, "public_url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(write(t, tt.toml), env(tt.env))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

// TestHostErrors: [[hosts]] entries are checked as the fleet API checks an
// admin's request, and the error names the key.
func TestHostErrors(t *testing.T) {
	keyA := newPublicKey(t, "agent-a")
	keyB := newPublicKey(t, "agent-b")
	host := func(fields string) string { return "[[hosts]]\n" + fields + "\n" }
	const storePath = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-a"
	tests := []struct {
		name, toml, want string
	}{
		{"good", host(`name = "a"`+"\npublic_key = \""+keyA+`"`+"\npolicy = \"pinned\"\ntarget = \""+storePath+`"`) +
			host(`name = "b"`+"\npublic_key = \""+keyB+`"`+"\nconfiguration = \"b-2\""), ""},
		{"bad name", host(`name = "a.b"` + "\npublic_key = \"" + keyA + `"`), "hosts[0].name"},
		{"bad key", host(`name = "a"` + "\npublic_key = \"agent-a:nope\""), "hosts[0].public_key"},
		{"duplicate key", host(`name = "a"`+"\npublic_key = \""+keyA+`"`) + host(`name = "b"`+"\npublic_key = \""+keyA+`"`),
			"hosts[1].public_key: is also hosts[0]'s key (a)"},
		{"target not a store path", host(`name = "a"` + "\npublic_key = \"" + keyA + `"` + "\ntarget = \"/etc/nixos\""), "hosts[0].target: \"/etc/nixos\" is not a store path"},
		{"target with a bad hash", host(`name = "a"` + "\npublic_key = \"" + keyA + `"` + "\ntarget = \"/nix/store/eeee-x\""), "hosts[0].target"},
		{"pinned without target", host(`name = "a"` + "\npublic_key = \"" + keyA + `"` + "\npolicy = \"pinned\""), "hosts[0].target"},
		{"bad configuration", host(`name = "a"` + "\npublic_key = \"" + keyA + `"` + "\nconfiguration = \"a.b\""), "hosts[0].configuration"},
		{"auto without repository", host(`name = "a"` + "\npublic_key = \"" + keyA + `"` + "\npolicy = \"auto\"\nrepository = \"infra\""), "hosts[0].repository"},
		{"top-level key after a table", host(`name = "a"`+"\npublic_key = \""+keyA+`"`) + `fleet_enrolment = "closed"`, "unknown key hosts.fleet_enrolment"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(write(t, tt.toml), env(nil))
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("err = %v, want none", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func newPublicKey(t *testing.T, name string) string {
	t.Helper()
	k, err := signing.Generate(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	return k.Public().String()
}

func TestValidName(t *testing.T) {
	for name, want := range map[string]bool{
		"nix-terminal": true, "a": true, "A.b_c-1": true,
		"": false, "-x": false, ".x": false, "a/b": false, "a..b": false, "a b": false, strings.Repeat("a", 65): false, "ä": false,
	} {
		if ValidName(name) != want {
			t.Errorf("ValidName(%q) = %v", name, !want)
		}
	}
}

func TestPushErrors(t *testing.T) {
	push := func(fields string) string { return "[[push]]\n" + fields + "\n" }
	tests := []struct {
		name, toml, want string
	}{
		{"good", `fleet_cache = "central"` + "\n" + push(`name = "central"`+"\nurl = \"http://cache:5000\"\ntoken_file = \"/etc/cf/token\"") +
			push(`name = "bucket"`+"\nurl = \"s3://b?endpoint=http://127.0.0.1:9000&region=us-east-1\"") + push(`name = "attic"`+"\nurl = \"attic://main\""), ""},
		{"bad name", push(`name = "a b"` + "\nurl = \"http://c\""), "push[0].name"},
		{"duplicate name", push(`name = "a"`+"\nurl = \"http://c\"") + push(`name = "a"`+"\nurl = \"http://d\""), "push[1].name: \"a\" is used twice"},
		{"bad scheme", push(`name = "a"` + "\nurl = \"ftp://c\""), "push[0].url"},
		{"token for s3", push(`name = "a"` + "\nurl = \"s3://b\"\ntoken_file = \"/t\""), "push[0].token_file"},
		{"unknown fleet cache", `fleet_cache = "nope"` + "\n" + push(`name = "a"`+"\nurl = \"http://c\""), "fleet_cache"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(write(t, tt.toml), env(nil))
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("err = %v, want none", err)
			case tt.want == "" && (len(c.Push) != 3 || c.Push[0].TokenFile != "/etc/cf/token" || c.FleetCache != "central"):
				t.Errorf("loaded %+v", c.Push)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}
