package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/client"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/fleet"
	"github.com/crystal-forge/crystal-forge/internal/fleetproto"
	"github.com/crystal-forge/crystal-forge/internal/nixbase32"
	"github.com/crystal-forge/crystal-forge/internal/nixstore"
	"github.com/crystal-forge/crystal-forge/internal/signing"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// fleetTestAgent signs heartbeats for one host, with timestamps that
// always increase (the server refuses one not newer than the last).
type fleetTestAgent struct {
	name string
	key  *signing.SecretKey
	mu   sync.Mutex
	last time.Time
}

func newFleetTestAgent(t *testing.T, name string) *fleetTestAgent {
	t.Helper()
	k, err := signing.Generate("agent-"+name, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &fleetTestAgent{name: name, key: k}
}

func (a *fleetTestAgent) pub() string { return a.key.Public().String() }

// beat POSTs a signed heartbeat to the server at base and returns the
// status code and body.
func (a *fleetTestAgent) beat(t *testing.T, base, current string, dep *fleetproto.DeploymentReport) (int, []byte) {
	t.Helper()
	a.mu.Lock()
	ts := time.Now().UTC()
	if !ts.After(a.last.Add(time.Millisecond)) {
		ts = a.last.Add(time.Millisecond)
	}
	a.last = ts
	a.mu.Unlock()
	body, err := json.Marshal(fleetproto.Heartbeat{Host: a.name, Current: current, Fingerprint: "sha256:fp-" + a.name,
		Timestamp: ts, Nonce: fleetproto.NewNonce(), Agent: "test", Deployment: dep})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, base+fleetproto.Path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	fleetproto.SignHeartbeat(req.Header, body, a.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("heartbeat of %s: %v", a.name, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// unbuiltPath is a well-formed store path that was never built.
func unbuiltPath(name string) string {
	b := make([]byte, 20)
	rand.Read(b)
	return "/nix/store/" + nixbase32.Encode(b) + "-" + name
}

// startFleetAPI serves the API with a fleet (enrolment pending, repository
// "infra" for auto hosts) on an httptest server. Its store is a database
// the test writes, holding the returned closure: the fleet only asks the
// store whether a target is valid, so this needs no Nix.
func startFleetAPI(t *testing.T) (*testsupport.BuildServer, *db.DB, testsupport.Closure) {
	t.Helper()
	d, err := db.Open(t.Context(), filepath.Join(t.TempDir(), "crystal-forge.db"))
	if err != nil {
		t.Fatal(err)
	}
	testsupport.CloseAtCleanup(t, d)
	c, storeCfg := testsupport.StoreDBClosure(t)
	st, err := nixstore.Open(t.Context(), storeCfg)
	if err != nil {
		t.Fatal(err)
	}
	testsupport.CloseAtCleanup(t, st)
	key, err := signing.Generate("cf-test", nil)
	if err != nil {
		t.Fatal(err)
	}
	svc := fleet.New(fleet.Config{DB: d, Store: st, Key: key, Repositories: []string{"infra"},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	return testsupport.StartBuildServer(t, testsupport.BuildServerConfig{DB: d, Fleet: svc}), d, c
}

// cli runs crystal-forge with args and returns its exit code and output.
func cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// hostRow returns the line of `hosts` output for host.
func hostRow(t *testing.T, out, host string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, host+" ") {
			return l
		}
	}
	t.Fatalf("no row for %s in:\n%s", host, out)
	return ""
}

func requireContains(t *testing.T, what, s string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(s, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, s)
		}
	}
}

func TestHostCommands(t *testing.T) {
	srv, d, c := startFleetAPI(t)
	t.Setenv("USER", "alice")
	short := func(p string) string { return shortStorePath(p) }
	S := "--server=" + srv.URL

	code, out, errOut := cli(t, "hosts", S)
	if code != 0 || !strings.Contains(out, "no hosts") {
		t.Fatalf("hosts on an empty fleet = %d %q %q", code, out, errOut)
	}

	chesty, pinny, newbie := newFleetTestAgent(t, "chesty"), newFleetTestAgent(t, "pinny"), newFleetTestAgent(t, "newbie")
	// Flags before and after the name.
	if code, out, errOut := cli(t, "host", "add", "chesty", "--key", chesty.pub(), S); code != 0 || out != "chesty: added, approved, policy manual\n" {
		t.Fatalf("host add chesty = %d %q %q", code, out, errOut)
	}
	if code, out, errOut := cli(t, "host", "add", S, "--policy", "pinned", "--target", c.Middle, "pinny", "--key", pinny.pub()); code != 0 ||
		!strings.Contains(out, "pinned("+short(c.Middle)+")") {
		t.Fatalf("host add pinny = %d %q %q", code, out, errOut)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"host", "add", "chesty", "--key", newbie.pub(), S}, 1, "409"},
		{[]string{"host", "add", "other", "--key", "junk", S}, 1, "public key"},
		{[]string{"host", "add", "other", "--key", newbie.pub(), "--policy", "auto", "--repo", "nope", S}, 1, "repository"},
		{[]string{"host", "add", "other", S}, 2, "--key is required"},
		{[]string{"host", "add", S}, 2, "usage"},
		{[]string{"host", "add", "other", "--key", newbie.pub(), "--colour", "red", S}, 2, "colour"},
		{[]string{"host"}, 2, "usage: crystal-forge host"},
		{[]string{"host", "frob"}, 2, `unknown command "frob"`},
		{[]string{"host", "show", S}, 2, "usage"},
		{[]string{"host", "show", "nobody", S}, 1, "404"},
		{[]string{"host", "show", "bad.name", S}, 1, "400"},
		{[]string{"host", "approve", "nobody", S}, 1, "404"},
		{[]string{"host", "set-target", "chesty", S}, 2, "usage"},
		{[]string{"host", "set-target", "chesty", "/etc/nixos", S}, 1, "store path"},
		{[]string{"host", "set-policy", "chesty", S}, 2, "usage"},
		{[]string{"host", "set-policy", "chesty", "yolo", S}, 1, "manual, pinned or auto"},
		{[]string{"host", "set-policy", "chesty", "pinned", S}, 2, "a pinned host needs a target: add --target STOREPATH"},
		{[]string{"host", "set-policy", "chesty", "pinned", "--target", "/etc/nixos", S}, 1, "store path"},
		{[]string{"host", "set-policy", "chesty", "auto", "--repo", "nope", S}, 1, "repository"},
		{[]string{"host", "set-policy", "nobody", "manual", S}, 1, "404"},
		{[]string{"hosts", "extra", S}, 2, "unexpected arguments"},
		{[]string{"hosts", "--server=http://127.0.0.1:1"}, 1, "connection refused"},
	} {
		code, out, errOut := cli(t, tc.args...)
		if code != tc.code || !strings.Contains(out+errOut, tc.want) {
			t.Errorf("%q = %d, stdout %q, stderr %q; want %d and %q", tc.args, code, out, errOut, tc.code, tc.want)
		}
	}

	// chesty gets a target that was never built: it is not sent, and the
	// table and the details say why.
	ghost := unbuiltPath("nixos-system-chesty-25.05")
	if code, out, errOut := cli(t, "host", "set-target", "chesty", ghost, S); code != 0 || !strings.HasPrefix(out, "chesty: policy manual, target "+ghost) {
		t.Fatalf("host set-target = %d %q %q", code, out, errOut)
	}
	if code, body := chesty.beat(t, srv.URL, c.Leaf, nil); code != 200 {
		t.Fatalf("heartbeat = %d %s", code, body)
	}
	if code, body := pinny.beat(t, srv.URL, c.Leaf, nil); code != 200 {
		t.Fatalf("heartbeat = %d %s", code, body)
	}
	if code, body := newbie.beat(t, srv.URL, c.Leaf, nil); code != 403 {
		t.Fatalf("heartbeat of an unknown host = %d %s", code, body)
	}
	code, out, errOut = cli(t, "hosts", S)
	if code != 0 {
		t.Fatalf("hosts = %d %q", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "HOST STATUS POLICY CURRENT DESIRED LAST-SEEN DRIFT LAST-DEPLOY ALERTS" {
		t.Fatalf("hosts output:\n%s", out)
	}
	row := hostRow(t, out, "chesty")
	requireContains(t, "chesty's row", row, " approved ", " manual ", short(c.Leaf), short(ghost), "target-not-sent")
	if !strings.HasPrefix(short(ghost), "nixos-system-chesty-25.05 (") || strings.Contains(row, "/nix/store") {
		t.Errorf("store paths are not shortened to name (hash): %q", row)
	}
	row = hostRow(t, out, "pinny")
	requireContains(t, "pinny's row", row, " approved ", " pinned ", short(c.Leaf), short(c.Middle))
	if strings.Contains(row, "target-not-sent") {
		t.Errorf("pinny's target is built, yet: %q", row)
	}
	row = hostRow(t, out, "newbie")
	requireContains(t, "newbie's row", row, " pending ", " enrolled")

	code, out, errOut = cli(t, "host", "show", "chesty", S)
	if code != 0 {
		t.Fatalf("host show = %d %q", code, errOut)
	}
	requireContains(t, "host show chesty", out, "Host:", "chesty (approved, online)", "Public key:", chesty.pub(),
		"Current:", c.Leaf, "Desired:", ghost+" (verification-failed)",
		"Not sent:", "is not built: it is not in this server's store",
		"Audit:", "loopback set-target", "loopback add-host", "Heartbeats:", "Deployments:\n  none")

	// A failed deployment, then an approval.
	dep := &fleetproto.DeploymentReport{Target: c.Middle, Previous: c.Leaf, Status: fleetproto.DeployRolledBack, Error: "unit failed",
		StartedAt: time.Now().Add(-time.Minute), DurationMS: 32100}
	if code, body := pinny.beat(t, srv.URL, c.Leaf, dep); code != 200 {
		t.Fatalf("heartbeat = %d %s", code, body)
	}
	if code, out, errOut := cli(t, "host", "approve", "newbie", S); code != 0 || out != "newbie: approved\n" {
		t.Fatalf("host approve = %d %q %q", code, out, errOut)
	}
	_, out, _ = cli(t, "hosts", S)
	requireContains(t, "pinny's row", hostRow(t, out, "pinny"), "rolled-back 32.1s", "deployment-failed")
	if row := hostRow(t, out, "newbie"); !strings.Contains(row, " approved ") || strings.Contains(row, "enrolled") {
		t.Errorf("newbie after approval: %q", row)
	}
	_, out, _ = cli(t, "host", "show", S, "pinny")
	requireContains(t, "host show pinny", out, "Alerts:", "deployment-failed: rolled-back", "Deployments:", "rolled-back", "32.1s", "unit failed",
		"Events:", "Policy:", "pinned("+short(c.Middle)+")")

	// auto follows the newest build of nixosConfigurations.chesty.
	b, _, err := d.CreateBuild(t.Context(), "infra", "api", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rid, err := d.StartResult(t.Context(), b.ID, "chesty", "nixos", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := d.FinishResult(t.Context(), rid, db.ResultSuccess, c.Derivers[c.Top], []string{c.Top}, "", time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := d.FinishBuild(t.Context(), b.ID, db.StatusSuccess, "", time.Now()); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := cli(t, "host", "set-policy", "chesty", "auto", "--repo", "infra", S); code != 0 || out != "chesty: policy auto(infra#chesty)\n" {
		t.Fatalf("host set-policy = %d %q %q", code, out, errOut)
	}
	code, body := chesty.beat(t, srv.URL, c.Leaf, nil)
	var reply fleetproto.Reply
	if code != 200 || json.Unmarshal(body, &reply) != nil || reply.Target != c.Top || !reply.Deploy || reply.Reason != "policy:update" {
		t.Fatalf("heartbeat after set-policy auto = %d %s", code, body)
	}
	_, out, _ = cli(t, "hosts", S)
	row = hostRow(t, out, "chesty")
	requireContains(t, "chesty's row", row, " auto(infra#chesty) ", short(c.Top))
	if strings.Contains(row, "target-not-sent") {
		t.Errorf("the auto target verified, yet: %q", row)
	}
	_, out, _ = cli(t, "host", "show", "chesty", S)
	requireContains(t, "host show chesty", out, "Desired:", c.Top+" (policy:update)", "Derivation:", c.Derivers[c.Top], "loopback set-policy")
	if strings.Contains(out, "Not sent:") {
		t.Errorf("host show still says the target was not sent:\n%s", out)
	}

	// Every change is in the audit log under the identity the server
	// established (this client connects over loopback), never $USER.
	log, err := client.New(srv.URL).Audit(t.Context(), "", 100)
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, e := range log {
		if e.Actor != "loopback" || !strings.HasPrefix(e.Remote, "127.0.0.1:") {
			t.Errorf("audit entry %+v: want actor loopback from 127.0.0.1", e)
		}
		actions = append(actions, e.Action+" "+e.Host)
	}
	if got, want := strings.Join(actions, ", "), "set-policy chesty, approve newbie, set-target chesty, add-host pinny, add-host chesty"; got != want {
		t.Errorf("audit log = %s, want %s", got, want)
	}
}

func TestShortStorePath(t *testing.T) {
	for in, want := range map[string]string{
		"/nix/store/ef01abcdefghijklmnpqrsvwxyz01234-nixos-system-chesty-25.05": "nixos-system-chesty-25.05 (ef01abcd)",
		"":                      "-",
		"/nix/store/short-name": "/nix/store/short-name",
		"/run/current-system":   "/run/current-system",
		"/nix/store/ef01abcdefghijklmnpqrsvwxyz01234-": "/nix/store/ef01abcdefghijklmnpqrsvwxyz01234-",
	} {
		if got := shortStorePath(in); got != want {
			t.Errorf("shortStorePath(%q) = %q, want %q", in, got, want)
		}
	}
	for d, want := range map[time.Duration]string{0: "just now", 12 * time.Second: "12s ago", 5 * time.Minute: "5m ago", 3 * time.Hour: "3h ago", 72 * time.Hour: "3d ago"} {
		if got := agoString(d); got != want {
			t.Errorf("agoString(%s) = %q, want %q", d, got, want)
		}
	}
}

// `host rekey` and `host remove` recover a name an impostor enrolled.
func TestHostRekeyRemove(t *testing.T) {
	srv, d, _ := startFleetAPI(t)
	S := "--server=" + srv.URL
	impostor, real := newFleetTestAgent(t, "h2"), newFleetTestAgent(t, "h2")
	if code, out := impostor.beat(t, srv.URL, "", nil); code != http.StatusForbidden {
		t.Fatalf("impostor enrolment = %d %s", code, out)
	}
	if code, out, errOut := cli(t, "host", "rekey", "h2", S); code != 2 || !strings.Contains(errOut, "--key is required") {
		t.Fatalf("rekey without --key = %d %q %q", code, out, errOut)
	}
	if code, out, errOut := cli(t, "host", "rekey", "h2", "--key", "nonsense", S); code != 1 || !strings.Contains(errOut, "400") {
		t.Fatalf("rekey with a bad key = %d %q %q", code, out, errOut)
	}
	if code, out, errOut := cli(t, "host", "rekey", "h2", "--key", real.pub(), S); code != 0 || !strings.Contains(out, "approved") {
		t.Fatalf("rekey = %d %q %q", code, out, errOut)
	}
	if code, out := real.beat(t, srv.URL, "", nil); code != http.StatusOK {
		t.Fatalf("the real host after rekey = %d %s", code, out)
	}
	if code, out, errOut := cli(t, "host", "remove", "h2", S); code != 0 || out != "h2: removed\n" {
		t.Fatalf("remove = %d %q %q", code, out, errOut)
	}
	if _, err := d.Host(t.Context(), "h2"); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("host after remove: %v", err)
	}
	if code, _, errOut := cli(t, "host", "remove", "h2", S); code != 1 || !strings.Contains(errOut, "404") {
		t.Fatalf("remove twice = %d %q", code, errOut)
	}
}
