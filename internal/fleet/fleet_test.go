package fleet_test

// Tests of the fleet's server side over real parts: a SQLite database in a
// temporary directory (and for some tests a PostgreSQL database, onPostgres), a Nix store database the test writes (with
// testsupport.WriteStoreDB; these tests only ask the store whether a target
// is valid, so they need no Nix) read through nixstore, ed25519 keys.
// Heartbeats go to Service.Heartbeat directly and, where status codes and
// headers matter, through the HTTP API (internal/api on an httptest server).

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/auth"
	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/fleet"
	"github.com/crystal-forge/crystal-forge/internal/fleetproto"
	"github.com/crystal-forge/crystal-forge/internal/nixbase32"
	"github.com/crystal-forge/crystal-forge/internal/nixstore"
	"github.com/crystal-forge/crystal-forge/internal/signing"
	ts "github.com/crystal-forge/crystal-forge/internal/testsupport"
	"github.com/crystal-forge/crystal-forge/internal/testsupport/pgtest"
)

// clock is the service's clock: tests move it, so timestamps, drift and
// the order of events are exact.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// env is a fleet service over a fresh database and a store that holds
// closure.
type env struct {
	t         *testing.T
	db        *db.DB
	store     *nixstore.Store
	closure   ts.Closure
	serverKey *signing.SecretKey
	svc       *fleet.Service
	clock     *clock
	// api is the HTTP API serving svc, when the test asked for it.
	api *ts.BuildServer
	// viaHTTP sends heartbeats through api instead of calling svc.
	viaHTTP bool
	// tokens are admin API tokens by name, made on first use.
	tokens map[string]string
}

const testRepo = "infra"

var admin = fleet.Actor{Name: "alice", Remote: "192.0.2.10:4000"}

func newEnv(t *testing.T, configure ...func(*fleet.Config)) *env {
	t.Helper()
	ctx := t.Context()
	d, err := db.Open(ctx, filepath.Join(t.TempDir(), "crystal-forge.db"))
	if err != nil {
		t.Fatal(err)
	}
	ts.CloseAtCleanup(t, d)
	closure, storeCfg := ts.StoreDBClosure(t)
	st, err := nixstore.Open(ctx, storeCfg)
	if err != nil {
		t.Fatal(err)
	}
	ts.CloseAtCleanup(t, st)
	key, err := signing.Generate("cf-test-server", nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{t: time.Now().UTC().Truncate(time.Millisecond)}
	cfg := fleet.Config{DB: d, Store: st, Key: key, Enrolment: fleet.EnrolPending, Repositories: []string{testRepo}, Now: c.Now,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, f := range configure {
		f(&cfg)
	}
	return &env{t: t, db: cfg.DB, store: st, closure: closure, serverKey: key, svc: fleet.New(cfg), clock: c}
}

// withAPI serves the env's fleet service over HTTP, on the same database.
func (e *env) withAPI() *env {
	e.t.Helper()
	if e.api == nil {
		e.api = ts.StartBuildServer(e.t, ts.BuildServerConfig{DB: e.db, Fleet: e.svc})
	}
	return e
}

// agent is a host's agent: its name and key, and the last timestamp it used.
type agent struct {
	name string
	key  *signing.SecretKey
}

func newAgent(t *testing.T, name string) *agent {
	t.Helper()
	k, err := signing.Generate("agent-"+name, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &agent{name: name, key: k}
}

func (a *agent) pub() string { return a.key.Public().String() }

// heartbeat returns a heartbeat of a at the env's clock, which it first
// moves on a second, so every heartbeat is newer than the one before.
func (e *env) heartbeat(a *agent, current string) fleetproto.Heartbeat {
	e.clock.Add(time.Second)
	return fleetproto.Heartbeat{
		Host: a.name, Current: current, Fingerprint: "sha256:fp-" + a.name,
		Timestamp: e.clock.Now(), Nonce: fleetproto.NewNonce(), Agent: "test",
		Facts: map[string]any{"kernel": "6.12"},
	}
}

// sign marshals hb and signs the body with key.
func sign(t *testing.T, hb fleetproto.Heartbeat, key *signing.SecretKey) ([]byte, http.Header) {
	t.Helper()
	body, err := json.Marshal(hb)
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	fleetproto.SignHeartbeat(h, body, key)
	return body, h
}

// outcome is the server's answer to a heartbeat.
type outcome struct {
	code    int
	reply   fleetproto.Reply // when 200
	body    []byte
	header  http.Header
	detail  string // when refused
	pending bool
}

const directRemote = "198.51.100.7:50000"

// send delivers a signed heartbeat body, directly or over HTTP. An answer
// of 200 must carry a reply signed by the server's key.
func (e *env) send(body []byte, h http.Header) outcome {
	e.t.Helper()
	var o outcome
	if e.viaHTTP {
		req, err := http.NewRequestWithContext(e.t.Context(), http.MethodPost, e.api.URL+fleetproto.Path, bytes.NewReader(body))
		if err != nil {
			e.t.Fatal(err)
		}
		req.Header = h.Clone()
		if req.Header == nil {
			req.Header = http.Header{}
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := e.api.HTTP.Client().Do(req)
		if err != nil {
			e.t.Fatal(err)
		}
		defer resp.Body.Close()
		o.code, o.header = resp.StatusCode, resp.Header
		if o.body, err = io.ReadAll(resp.Body); err != nil {
			e.t.Fatal(err)
		}
		if o.code != http.StatusOK {
			var r struct{ Detail, Status string }
			if err := json.Unmarshal(o.body, &r); err != nil || r.Detail == "" {
				e.t.Fatalf("heartbeat refused with %d and body %q, want {\"detail\": …}", o.code, o.body)
			}
			o.detail, o.pending = r.Detail, r.Status == db.HostPending
			return o
		}
	} else {
		out, rh, err := e.svc.Heartbeat(e.t.Context(), h, body, directRemote)
		var rej *fleet.Rejection
		switch {
		case errors.As(err, &rej):
			return outcome{code: rej.Code, detail: rej.Detail, pending: rej.Pending}
		case err != nil:
			e.t.Fatalf("Heartbeat: %v", err)
		}
		o = outcome{code: http.StatusOK, body: out, header: rh}
	}
	if err := fleetproto.VerifyReply(o.header, o.body, []*signing.PublicKey{e.serverKey.Public()}); err != nil {
		e.t.Fatalf("reply %s: signature does not verify with the server's key: %v", o.body, err)
	}
	if err := json.Unmarshal(o.body, &o.reply); err != nil {
		e.t.Fatalf("reply %q: %v", o.body, err)
	}
	return o
}

// beat sends hb signed by a's key.
func (e *env) beat(a *agent, hb fleetproto.Heartbeat) outcome {
	e.t.Helper()
	body, h := sign(e.t, hb, a.key)
	return e.send(body, h)
}

// ok sends a heartbeat from a running current and requires 200 with the
// nonce and host echoed.
func (e *env) ok(a *agent, current string) fleetproto.Reply {
	e.t.Helper()
	hb := e.heartbeat(a, current)
	o := e.beat(a, hb)
	if o.code != http.StatusOK {
		e.t.Fatalf("heartbeat of %s = %d %s, want 200", a.name, o.code, o.detail)
	}
	if o.reply.Nonce != hb.Nonce || o.reply.Host != a.name || o.reply.Status != db.HostApproved {
		e.t.Fatalf("reply %+v does not echo nonce %q and host %s, status approved", o.reply, hb.Nonce, a.name)
	}
	return o.reply
}

func (e *env) host(name string) *db.Host {
	e.t.Helper()
	h, err := e.db.Host(e.t.Context(), name)
	if err != nil {
		e.t.Fatalf("host %s: %v", name, err)
	}
	return h
}

func (e *env) view(name string) *fleet.HostView {
	e.t.Helper()
	v, err := e.svc.View(e.t.Context(), e.host(name), true)
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

func (e *env) add(a *agent, p fleet.Policy) {
	e.t.Helper()
	if err := e.svc.AddHost(e.t.Context(), admin, a.name, a.pub(), p); err != nil {
		e.t.Fatalf("AddHost %s: %v", a.name, err)
	}
}

// both runs f once calling the service directly and once over HTTP.
func both(t *testing.T, f func(t *testing.T, e *env), configure ...func(*fleet.Config)) {
	t.Run("direct", func(t *testing.T) { f(t, newEnv(t, configure...)) })
	t.Run("http", func(t *testing.T) {
		e := newEnv(t, configure...).withAPI()
		e.viaHTTP = true
		f(t, e)
	})
	t.Run("postgres", func(t *testing.T) { f(t, newEnv(t, append(configure, onPostgres(t))...)) })
}

// onPostgres gives the service a fresh PostgreSQL database instead of
// SQLite.
func onPostgres(t *testing.T) func(*fleet.Config) {
	return func(c *fleet.Config) {
		d, err := db.Open(t.Context(), pgtest.NewDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := d.Close(); err != nil {
				t.Errorf("close database: %v", err)
			}
		})
		c.DB = d
	}
}

// eachDB runs f on SQLite and on PostgreSQL; f passes onDB to newEnv.
func eachDB(t *testing.T, f func(t *testing.T, onDB ...func(*fleet.Config))) {
	t.Run("sqlite", func(t *testing.T) { f(t) })
	t.Run("postgres", func(t *testing.T) { f(t, onPostgres(t)) })
}

// ghostPath is a well-formed store path that was never built.
func ghostPath(t *testing.T, name string) string {
	t.Helper()
	b := make([]byte, 20)
	rand.Read(b)
	return "/nix/store/" + nixbase32.Encode(b) + "-" + name
}

// A system path as agents report it; only its form matters to the server.
func systemPath(t *testing.T, host string) string { return ghostPath(t, "nixos-system-"+host+"-25.05") }

func alertKinds(v *fleet.HostView) []string {
	var k []string
	for _, a := range v.Alerts {
		k = append(k, a.Kind)
	}
	return k
}

func eventKinds(events []*db.HostEvent) []string {
	var k []string
	for _, e := range events {
		k = append(k, e.Kind)
	}
	return k
}

func TestHeartbeatAuthentication(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		a := newAgent(t, "chesty")
		e.add(a, fleet.Policy{})
		cur := systemPath(t, "chesty")

		refused := func(what string, o outcome, code int, detail string) {
			t.Helper()
			if o.code != code || !strings.Contains(o.detail, detail) {
				t.Errorf("%s: %d %q, want %d with %q", what, o.code, o.detail, code, detail)
			}
		}
		body, h := sign(t, e.heartbeat(a, cur), a.key)
		refused("unsigned", e.send(body, http.Header{}), 401, "not signed")
		keyOnly := http.Header{}
		keyOnly.Set(fleetproto.HeaderKey, a.pub())
		refused("key without signature", e.send(body, keyOnly), 401, "not signed")
		badKey := h.Clone()
		badKey.Set(fleetproto.HeaderKey, "not-a-key")
		refused("unparsable key", e.send(body, badKey), 401, "not signed")

		// The signature is over another body: the claims were changed.
		tampered := bytes.Replace(body, []byte(cur), []byte(systemPath(t, "evil")), 1)
		refused("tampered body", e.send(tampered, h), 401, "does not verify")
		// A signature over the same body without the domain prefix (e.g. a
		// narinfo signature by the same key) does not count either.
		raw := h.Clone()
		raw.Set(fleetproto.HeaderSignature, a.key.Sign(body))
		refused("signature without the heartbeat domain", e.send(body, raw), 401, "does not verify")

		// Validly signed, but by a key the host is not registered with.
		mallory := &agent{name: a.name, key: newAgent(t, "mallory").key}
		refused("another key", e.beat(mallory, e.heartbeat(mallory, cur)), 401, "key not registered")

		stale := e.heartbeat(a, cur)
		stale.Timestamp = e.clock.Now().Add(-10 * time.Minute)
		refused("10 minutes old", e.beat(a, stale), 401, "stale")
		future := e.heartbeat(a, cur)
		future.Timestamp = e.clock.Now().Add(10 * time.Minute)
		refused("10 minutes ahead", e.beat(a, future), 401, "stale")

		if got := e.host("chesty"); got.LastSeen != nil || got.Current != "" {
			t.Fatalf("refused heartbeats changed the host: %+v", got)
		}
		e.ok(a, cur)
		if got := e.host("chesty"); got.Current != cur || got.LastSeen == nil || !got.LastSeen.Equal(e.clock.Now()) {
			t.Fatalf("after an accepted heartbeat the host = %+v, want current %s seen now", got, cur)
		}
	})
}

func TestHeartbeatValidation(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		a := newAgent(t, "chesty")
		e.add(a, fleet.Policy{})
		cur := systemPath(t, "chesty")
		bad := func(what string, o outcome, detail string) {
			t.Helper()
			if o.code != http.StatusBadRequest || !strings.Contains(o.detail, detail) {
				t.Errorf("%s: %d %q, want 400 with %q", what, o.code, o.detail, detail)
			}
		}
		signed := func(body string) outcome {
			h := http.Header{}
			fleetproto.SignHeartbeat(h, []byte(body), a.key)
			return e.send([]byte(body), h)
		}
		bad("malformed JSON", signed(`{"host": "chesty", "current": `), "malformed")
		bad("JSON of the wrong shape", signed(`{"host": 7}`), "malformed")
		bad("not an object", signed(`[]`), "malformed")

		for _, name := range []string{"", "-chesty", "ches ty", "chesty.example.com", "../etc", strings.Repeat("a", 64)} {
			hb := e.heartbeat(a, cur)
			hb.Host = name
			bad(fmt.Sprintf("host name %q", name), e.beat(a, hb), "invalid host name")
		}
		for _, p := range []string{"/tmp/system", "/nix/store/short", cur + "/bin/switch-to-configuration", "/nix/store/../etc/passwd-00000000000000000000000000000", "nixos-system"} {
			bad(fmt.Sprintf("current %q", p), e.beat(a, e.heartbeat(a, p)), "not a store path")
		}
		noNonce := e.heartbeat(a, cur)
		noNonce.Nonce = ""
		bad("no nonce", e.beat(a, noNonce), "nonce")
		bigNonce := e.heartbeat(a, cur)
		bigNonce.Nonce = strings.Repeat("n", 129)
		bad("oversized nonce", e.beat(a, bigNonce), "nonce")
		if e.host("chesty").LastSeen != nil {
			t.Fatal("a refused heartbeat marked the host seen")
		}
		// A host that runs nothing the server knows of may say so.
		if r := e.ok(a, ""); r.Target != "" || r.Deploy {
			t.Fatalf("reply to an empty current = %+v", r)
		}
	})
}

func TestHeartbeatTooLarge(t *testing.T) {
	e := newEnv(t).withAPI()
	a := newAgent(t, "chesty")
	e.add(a, fleet.Policy{})
	hb := e.heartbeat(a, systemPath(t, "chesty"))
	hb.Facts = map[string]any{"junk": strings.Repeat("x", 1<<20)}
	body, h := sign(t, hb, a.key)
	code, resp := e.api.Do(t, http.MethodPost, fleetproto.Path, body, h)
	if code != http.StatusRequestEntityTooLarge {
		t.Fatalf("a heartbeat over 1 MiB = %d %s, want 413", code, resp)
	}
}

func TestEnrolmentPending(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		a := newAgent(t, "newbie")
		cur := systemPath(t, "newbie")
		o := e.beat(a, e.heartbeat(a, cur))
		if o.code != http.StatusForbidden || !o.pending {
			t.Fatalf("first contact of an unknown host = %d %q pending=%v, want 403 pending", o.code, o.detail, o.pending)
		}
		h := e.host("newbie")
		if h.Status != db.HostPending || h.PublicKey != a.pub() || h.Policy != db.PolicyManual || h.LastSeen == nil || h.Remote == "" {
			t.Fatalf("enrolled host = %+v, want pending with the agent's key, manual, seen, with its address", h)
		}
		// Nothing it claims is recorded before an admin approves it.
		if h.Current != "" || h.Fingerprint != "" {
			t.Fatalf("a pending host's claims were recorded: %+v", h)
		}
		v := e.view("newbie")
		if k := eventKinds(v.Events); !slices.Equal(k, []string{"enrolled"}) || !strings.Contains(v.Events[0].Detail, a.pub()) {
			t.Fatalf("events = %q (%+v), want one \"enrolled\" naming the key", k, v.Events)
		}
		if k := alertKinds(v); !slices.Equal(k, []string{"enrolled"}) {
			t.Fatalf("alerts of a pending host = %q, want enrolled", k)
		}

		// It keeps calling in: still pending, no second enrolment.
		if o := e.beat(a, e.heartbeat(a, cur)); o.code != http.StatusForbidden || !o.pending {
			t.Fatalf("pending host calling again = %d %q, want 403 pending", o.code, o.detail)
		}
		if k := eventKinds(e.view("newbie").Events); len(k) != 1 {
			t.Fatalf("events after a second call = %q, want the one enrolment", k)
		}
		// Its key cannot enrol another name.
		other := &agent{name: "impostor", key: a.key}
		if o := e.beat(other, e.heartbeat(other, cur)); o.code != http.StatusUnauthorized {
			t.Fatalf("a second host with the same key = %d %q, want 401", o.code, o.detail)
		}
		if _, err := e.db.Host(t.Context(), "impostor"); !errors.Is(err, db.ErrNotFound) {
			t.Fatalf("host impostor: %v, want not found", err)
		}

		if err := e.svc.Approve(t.Context(), admin, "newbie"); err != nil {
			t.Fatal(err)
		}
		if r := e.ok(a, cur); r.Deploy || r.Target != cur || r.Reason != "policy:manual:unset" {
			t.Fatalf("first reply after approval = %+v, want to stay on %s", r, cur)
		}
		v = e.view("newbie")
		if v.Status != db.HostApproved || v.Current != cur || len(v.Alerts) != 0 {
			t.Fatalf("approved host = %+v alerts %q, want approved, current recorded, no alerts", v.Host, alertKinds(v))
		}
	})
}

func TestEnrolmentClosed(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		a := newAgent(t, "stranger")
		o := e.beat(a, e.heartbeat(a, systemPath(t, "stranger")))
		if o.code != http.StatusForbidden || o.pending || !strings.Contains(o.detail, "register") {
			t.Fatalf("unknown host with enrolment closed = %d %q pending=%v, want 403, not pending", o.code, o.detail, o.pending)
		}
		if _, err := e.db.Host(t.Context(), "stranger"); !errors.Is(err, db.ErrNotFound) {
			t.Fatalf("host row after a closed enrolment: %v, want none", err)
		}
		// A pre-registered host is served as usual.
		b := newAgent(t, "known")
		e.add(b, fleet.Policy{})
		e.ok(b, systemPath(t, "known"))
	}, func(c *fleet.Config) { c.Enrolment = fleet.EnrolClosed })
}

func TestReplay(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		a := newAgent(t, "chesty")
		e.add(a, fleet.Policy{})
		cur := systemPath(t, "chesty")
		first := e.heartbeat(a, cur)
		body, h := sign(t, first, a.key)
		if o := e.send(body, h); o.code != http.StatusOK {
			t.Fatalf("first heartbeat = %d %q", o.code, o.detail)
		}
		e.clock.Add(time.Second) // still fresh
		if o := e.send(body, h); o.code != http.StatusConflict {
			t.Fatalf("the same signed body again = %d %q, want 409", o.code, o.detail)
		}
		second := e.heartbeat(a, cur)
		if o := e.beat(a, second); o.code != http.StatusOK {
			t.Fatalf("a newer heartbeat = %d %q", o.code, o.detail)
		}
		older := e.heartbeat(a, systemPath(t, "rollback"))
		older.Timestamp = first.Timestamp.Add(500 * time.Millisecond) // newer than first, older than second
		if o := e.beat(a, older); o.code != http.StatusConflict {
			t.Fatalf("a heartbeat older than the last accepted = %d %q, want 409", o.code, o.detail)
		}
		same := e.heartbeat(a, cur)
		same.Timestamp = second.Timestamp
		if o := e.beat(a, same); o.code != http.StatusConflict {
			t.Fatalf("a heartbeat with the last accepted timestamp = %d %q, want 409", o.code, o.detail)
		}
		if h := e.host("chesty"); h.Current != cur {
			t.Fatalf("a refused replay changed current to %s", h.Current)
		}
		if hb := e.view("chesty").Heartbeats; len(hb) != 1 || hb[0].Count != 2 {
			t.Fatalf("heartbeat history = %+v, want one run of the 2 accepted", hb)
		}
	})
}

func TestReplySignature(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		a := newAgent(t, "chesty")
		e.add(a, fleet.Policy{})
		cur := systemPath(t, "chesty")
		hb := e.heartbeat(a, cur)
		o := e.beat(a, hb) // send verified the signature with the server's key
		if o.code != http.StatusOK {
			t.Fatalf("heartbeat = %d %q", o.code, o.detail)
		}
		r := o.reply
		if r.Nonce != hb.Nonce || r.Host != "chesty" || r.Status != db.HostApproved || !r.Timestamp.Equal(e.clock.Now()) {
			t.Fatalf("reply = %+v, want nonce %q, host chesty, approved, the server's time", r, hb.Nonce)
		}
		if o.header.Get(fleetproto.HeaderKey) != e.serverKey.Public().String() {
			t.Errorf("reply key header = %q, want the server's %q", o.header.Get(fleetproto.HeaderKey), e.serverKey.Public())
		}
		other := newAgent(t, "other").key.Public()
		if err := fleetproto.VerifyReply(o.header, o.body, []*signing.PublicKey{other}); err == nil {
			t.Error("the reply verifies with a key that did not sign it")
		}
		// The agent may trust several keys; one is enough.
		if err := fleetproto.VerifyReply(o.header, o.body, []*signing.PublicKey{other, e.serverKey.Public()}); err != nil {
			t.Errorf("the reply does not verify against a list holding the server's key: %v", err)
		}
		forged := bytes.Replace(o.body, []byte(`"deploy":false`), []byte(`"deploy":true`), 1)
		if bytes.Equal(forged, o.body) {
			t.Fatalf("reply %s has no \"deploy\":false", o.body)
		}
		if err := fleetproto.VerifyReply(o.header, forged, []*signing.PublicKey{e.serverKey.Public()}); err == nil {
			t.Error("a changed reply still verifies")
		}
		// A heartbeat signature by the server key is not a reply signature.
		h := http.Header{}
		fleetproto.SignHeartbeat(h, o.body, e.serverKey)
		if err := fleetproto.VerifyReply(h, o.body, []*signing.PublicKey{e.serverKey.Public()}); err == nil {
			t.Error("a heartbeat-domain signature verifies as a reply")
		}
		if e.viaHTTP && !strings.HasPrefix(o.header.Get("Content-Type"), "application/json") {
			t.Errorf("reply Content-Type = %q", o.header.Get("Content-Type"))
		}
	})
}

func TestHeartbeatCompaction(t *testing.T) {
	e := newEnv(t)
	a := newAgent(t, "chesty")
	e.add(a, fleet.Policy{})
	cur, next := systemPath(t, "chesty"), systemPath(t, "chesty-next")
	start := e.clock.Now().Add(time.Second)
	const n = 6
	for range n {
		e.ok(a, cur)
	}
	hbs := e.view("chesty").Heartbeats
	if len(hbs) != 1 {
		t.Fatalf("%d identical heartbeats made %d rows, want 1: %+v", n, len(hbs), hbs)
	}
	if r := hbs[0]; r.Count != n || r.Current != cur || r.Fingerprint != "sha256:fp-chesty" || !r.FirstAt.Equal(start) || !r.LastAt.Equal(e.clock.Now()) {
		t.Fatalf("row = %+v, want count %d of %s from %s to %s", r, n, cur, start, e.clock.Now())
	}
	e.ok(a, next)
	e.ok(a, next)
	e.ok(a, cur)
	hbs = e.view("chesty").Heartbeats
	if len(hbs) != 3 || hbs[0].Current != cur || hbs[0].Count != 1 || hbs[1].Current != next || hbs[1].Count != 2 || hbs[2].Count != n {
		t.Fatalf("rows after switching and back = %+v, want newest first: cur×1, next×2, cur×%d", hbs, n)
	}
}

func TestFingerprintChange(t *testing.T) {
	e := newEnv(t)
	a := newAgent(t, "chesty")
	e.add(a, fleet.Policy{})
	cur := systemPath(t, "chesty")
	e.ok(a, cur)
	e.ok(a, cur)
	if v := e.view("chesty"); len(v.Events) != 0 || len(v.Alerts) != 0 {
		t.Fatalf("events %q alerts %q with a steady fingerprint", eventKinds(v.Events), alertKinds(v))
	}
	hb := e.heartbeat(a, cur)
	hb.Fingerprint = "sha256:new-board"
	if o := e.beat(a, hb); o.code != http.StatusOK {
		t.Fatalf("heartbeat = %d %q", o.code, o.detail)
	}
	v := e.view("chesty")
	if k := eventKinds(v.Events); !slices.Equal(k, []string{"fingerprint-changed"}) {
		t.Fatalf("events = %q, want fingerprint-changed", k)
	}
	if d := v.Events[0].Detail; !strings.Contains(d, "sha256:fp-chesty") || !strings.Contains(d, "sha256:new-board") {
		t.Errorf("event detail %q, want the old and the new fingerprint", d)
	}
	if k := alertKinds(v); !slices.Equal(k, []string{"fingerprint-changed"}) {
		t.Fatalf("alerts = %q, want fingerprint-changed", k)
	}
	if v.Fingerprint != "sha256:new-board" || len(v.Heartbeats) != 2 {
		t.Fatalf("fingerprint %q, %d heartbeat rows; want the new one recorded in a new row", v.Fingerprint, len(v.Heartbeats))
	}
	// The list shows the alert too.
	sum, err := e.svc.View(t.Context(), e.host("chesty"), false)
	if err != nil {
		t.Fatal(err)
	}
	if k := alertKinds(sum); !slices.Equal(k, []string{"fingerprint-changed"}) || sum.Heartbeats != nil || sum.Events != nil {
		t.Fatalf("summary view alerts %q, histories %v %v; want the alert and no histories", k, sum.Heartbeats, sum.Events)
	}
}

func TestDeploymentReports(t *testing.T) {
	e := newEnv(t)
	a := newAgent(t, "chesty")
	e.add(a, fleet.Policy{})
	prev, tgt := systemPath(t, "chesty-old"), systemPath(t, "chesty-new")
	e.ok(a, prev)

	hb := e.heartbeat(a, prev)
	started := e.clock.Now().Add(-40 * time.Second)
	hb.Deployment = &fleetproto.DeploymentReport{Target: tgt, Previous: prev, Status: fleetproto.DeployRolledBack,
		Error: "switch-to-configuration failed: unit foo.service", StartedAt: started, DurationMS: 32100}
	if o := e.beat(a, hb); o.code != http.StatusOK {
		t.Fatalf("heartbeat = %d %q", o.code, o.detail)
	}
	v := e.view("chesty")
	if len(v.Deployments) != 1 {
		t.Fatalf("deployments = %+v, want one", v.Deployments)
	}
	d := v.Deployments[0]
	if d.Host != "chesty" || d.Target != tgt || d.Previous != prev || d.Status != "rolled-back" || d.DurationMS != 32100 ||
		!d.StartedAt.Equal(started) || !d.ReportedAt.Equal(e.clock.Now()) || !strings.Contains(d.Error, "foo.service") {
		t.Fatalf("deployment = %+v", d)
	}
	if v.LastDeployment == nil || v.LastDeployment.ID != d.ID {
		t.Fatalf("last deployment = %+v, want %d", v.LastDeployment, d.ID)
	}
	if k := alertKinds(v); !slices.Equal(k, []string{"deployment-failed"}) || !strings.Contains(v.Alerts[0].Detail, "rolled-back") {
		t.Fatalf("alerts = %+v, want deployment-failed (rolled-back)", v.Alerts)
	}

	// A later failure of the other kind and a dry run keep the alert.
	hb = e.heartbeat(a, prev)
	hb.Deployment = &fleetproto.DeploymentReport{Target: tgt, Previous: prev, Status: fleetproto.DeployDryRun, StartedAt: e.clock.Now(), DurationMS: 5}
	e.beat(a, hb)
	if k := alertKinds(e.view("chesty")); !slices.Equal(k, []string{"deployment-failed"}) {
		t.Fatalf("alerts after a dry run = %q, want the failure still", k)
	}

	hb = e.heartbeat(a, tgt)
	hb.Deployment = &fleetproto.DeploymentReport{Target: tgt, Previous: prev, Status: fleetproto.DeploySuccess, StartedAt: e.clock.Now().Add(-time.Second), DurationMS: 900}
	if o := e.beat(a, hb); o.code != http.StatusOK {
		t.Fatalf("heartbeat = %d %q", o.code, o.detail)
	}
	v = e.view("chesty")
	if len(v.Alerts) != 0 {
		t.Fatalf("alerts after a successful deployment = %+v, want none", v.Alerts)
	}
	if len(v.Deployments) != 3 || v.LastDeployment.Status != "success" || v.Deployments[2].Status != "rolled-back" {
		t.Fatalf("deployments = %+v, want 3, newest (success) first", v.Deployments)
	}
	if k := eventKinds(v.Events); !slices.Equal(k, []string{"deployment-failed"}) {
		t.Fatalf("events = %q: the failure stays in the history", k)
	}

	// A failure whose rollback failed too raises a new alert; the one the
	// success settled stays settled.
	hb = e.heartbeat(a, tgt)
	hb.Deployment = &fleetproto.DeploymentReport{Target: prev, Previous: tgt, Status: fleetproto.DeployFailed, Error: "boom", StartedAt: e.clock.Now(), DurationMS: 1}
	e.beat(a, hb)
	v = e.view("chesty")
	if k := alertKinds(v); !slices.Equal(k, []string{"deployment-failed"}) || !strings.Contains(v.Alerts[0].Detail, "boom") {
		t.Fatalf("alerts after a new failed deployment = %+v, want only the new failure", v.Alerts)
	}
}

// policyEnv has a host and a closure in the store to target.
func policyEnv(t *testing.T, configure ...func(*fleet.Config)) (*env, *agent, ts.Closure) {
	e := newEnv(t, configure...)
	a := newAgent(t, "chesty")
	e.add(a, fleet.Policy{})
	return e, a, e.closure
}

func TestPolicyManual(t *testing.T) {
	e, a, c := policyEnv(t)
	ctx := t.Context()
	r := e.ok(a, c.Leaf)
	if r.Reason != "policy:manual:unset" || r.Deploy || r.Target != c.Leaf {
		t.Fatalf("manual without a target = %+v, want policy:manual:unset, stay on current", r)
	}
	if h := e.host("chesty"); h.Desired != "" || h.DesiredReason != "policy:manual:unset" || h.DriftSince != nil || h.TargetError != "" {
		t.Fatalf("host = %+v", h)
	}

	if err := e.svc.SetTarget(ctx, admin, "chesty", c.Top); err != nil {
		t.Fatal(err)
	}
	r = e.ok(a, c.Leaf)
	if r.Reason != "policy:manual" || !r.Deploy || r.Target != c.Top {
		t.Fatalf("manual target in the store = %+v, want deploy %s", r, c.Top)
	}
	h := e.host("chesty")
	if h.Desired != c.Top || h.DesiredReason != "policy:manual" || h.TargetError != "" || h.DriftSince == nil || !h.DriftSince.Equal(e.clock.Now()) {
		t.Fatalf("host = %+v, want desired %s, drifting since now", h, c.Top)
	}
	driftStart := *h.DriftSince
	e.clock.Add(5 * time.Minute)
	e.ok(a, c.Leaf) // still behind: the drift clock keeps its start
	v := e.view("chesty")
	if v.DriftSince == nil || !v.DriftSince.Equal(driftStart) || v.Drift != "5m1s" {
		t.Fatalf("drift since %v (%q), want since %s, 5m1s", v.DriftSince, v.Drift, driftStart)
	}
	r = e.ok(a, c.Top)
	if r.Reason != "policy:manual" || r.Deploy || r.Target != c.Top {
		t.Fatalf("manual, in sync = %+v, want no deploy", r)
	}
	if v := e.view("chesty"); v.DriftSince != nil || v.Drift != "" {
		t.Fatalf("in sync, drift since %v (%q), want none", v.DriftSince, v.Drift)
	}
}

func TestPolicyPinned(t *testing.T) {
	e, a, c := policyEnv(t)
	if err := e.svc.SetPolicy(t.Context(), admin, "chesty", fleet.Policy{Policy: db.PolicyPinned, Target: c.Middle}, ""); err != nil {
		t.Fatal(err)
	}
	if r := e.ok(a, c.Leaf); r.Reason != "policy:pinned" || !r.Deploy || r.Target != c.Middle {
		t.Fatalf("pinned = %+v, want deploy %s", r, c.Middle)
	}
	if r := e.ok(a, c.Middle); r.Reason != "policy:pinned" || r.Deploy || r.Target != c.Middle {
		t.Fatalf("pinned, in sync = %+v", r)
	}
}

func TestTargetVerification(t *testing.T) {
	e, a, c := policyEnv(t)
	ctx := t.Context()
	ghost := ghostPath(t, "nixos-system-chesty-25.05")
	for _, p := range []fleet.Policy{{Policy: db.PolicyManual, Target: ghost}, {Policy: db.PolicyPinned, Target: ghost}} {
		if err := e.svc.SetPolicy(ctx, admin, "chesty", p, ""); err != nil {
			t.Fatal(err)
		}
		r := e.ok(a, c.Leaf)
		if r.Reason != "verification-failed" || r.Deploy || r.Target != c.Leaf {
			t.Fatalf("%s target never built = %+v, want verification-failed, stay on %s", p.Policy, r, c.Leaf)
		}
		h := e.host("chesty")
		if h.Desired != ghost || h.DesiredReason != "verification-failed" || !strings.Contains(h.TargetError, ghost) ||
			!strings.Contains(h.TargetError, "not in this server's store") {
			t.Fatalf("%s: host = desired %q reason %q target_error %q, want the unbuilt target and why it was not sent", p.Policy, h.Desired, h.DesiredReason, h.TargetError)
		}
		// The host is not where it should be, even though it is not told to move.
		if h.DriftSince == nil {
			t.Errorf("%s: no drift recorded while the host runs %s and should run %s", p.Policy, c.Leaf, ghost)
		}
	}
	// A path whose hash is in the store under another name is not it.
	impostor := c.Top[:len("/nix/store/")+32] + "-nixos-system-evil"
	if err := e.svc.SetTarget(ctx, admin, "chesty", impostor); err != nil {
		t.Fatal(err)
	}
	if r := e.ok(a, c.Leaf); r.Reason != "verification-failed" || r.Deploy || r.Target != c.Leaf {
		t.Fatalf("target with a built path's hash and another name = %+v, want verification-failed", r)
	}
	// Once the target is built, it is handed out and the error is gone.
	if err := e.svc.SetTarget(ctx, admin, "chesty", c.Top); err != nil {
		t.Fatal(err)
	}
	if r := e.ok(a, c.Leaf); r.Reason != "policy:manual" || !r.Deploy || r.Target != c.Top {
		t.Fatalf("built target = %+v", r)
	}
	if h := e.host("chesty"); h.TargetError != "" {
		t.Fatalf("target_error %q after a target that verifies", h.TargetError)
	}
}

func TestFailedTargetNotResent(t *testing.T) {
	e, a, c := policyEnv(t)
	ctx := t.Context()
	if err := e.svc.SetTarget(ctx, admin, "chesty", c.Top); err != nil {
		t.Fatal(err)
	}
	if r := e.ok(a, c.Leaf); !r.Deploy || r.Target != c.Top {
		t.Fatalf("reply = %+v, want deploy %s", r, c.Top)
	}
	hb := e.heartbeat(a, c.Leaf)
	hb.Deployment = &fleetproto.DeploymentReport{Target: c.Top, Previous: c.Leaf, Status: fleetproto.DeployRolledBack, Error: "activation failed", StartedAt: e.clock.Now(), DurationMS: 10}
	for i, o := range []outcome{e.beat(a, hb), e.beat(a, e.heartbeat(a, c.Leaf))} {
		if o.code != http.StatusOK || o.reply.Deploy || o.reply.Target != c.Leaf || o.reply.Reason != "deployment-failed" {
			t.Fatalf("heartbeat %d after the host failed to switch to %s = %d %+v, want it kept on %s", i, c.Top, o.code, o.reply, c.Leaf)
		}
	}
	v := e.view("chesty")
	if v.Desired != c.Top || !strings.Contains(v.TargetError, "failed on the host") || !slices.Equal(alertKinds(v), []string{"deployment-failed"}) {
		t.Fatalf("host = desired %q target_error %q alerts %q", v.Desired, v.TargetError, alertKinds(v))
	}
	// Setting the same target again is the admin's retry.
	e.clock.Add(time.Second)
	if err := e.svc.SetTarget(ctx, admin, "chesty", c.Top); err != nil {
		t.Fatal(err)
	}
	if r := e.ok(a, c.Leaf); !r.Deploy || r.Target != c.Top || r.Reason != "policy:manual" {
		t.Fatalf("after set-target again = %+v, want deploy %s", r, c.Top)
	}
	if h := e.host("chesty"); h.TargetError != "" {
		t.Fatalf("target_error %q after the retry", h.TargetError)
	}
	// A target the agent refused or could not fetch changed nothing: it is
	// an alert, but the target is sent again.
	hb = e.heartbeat(a, c.Leaf)
	hb.Deployment = &fleetproto.DeploymentReport{Target: c.Top, Previous: c.Leaf, Status: fleetproto.DeployNotApplied, Error: "closure not fetched", StartedAt: e.clock.Now(), DurationMS: 10}
	if o := e.beat(a, hb); !o.reply.Deploy || o.reply.Target != c.Top || o.reply.Reason != "policy:manual" {
		t.Fatalf("after a not-applied report = %+v, want deploy %s again", o.reply, c.Top)
	}
	if v := e.view("chesty"); !slices.Equal(alertKinds(v), []string{"deployment-failed", "deployment-failed"}) || !strings.Contains(v.Alerts[0].Detail, "not-applied") {
		t.Fatalf("alerts after a not-applied report = %+v, want it on top of the rolled-back one", v.Alerts)
	}
	// A failure of another target does not hold this one back.
	hb = e.heartbeat(a, c.Leaf)
	hb.Deployment = &fleetproto.DeploymentReport{Target: c.Middle, Previous: c.Leaf, Status: fleetproto.DeployFailed, StartedAt: e.clock.Now(), DurationMS: 10}
	if o := e.beat(a, hb); !o.reply.Deploy || o.reply.Target != c.Top {
		t.Fatalf("after a failure of another target = %+v, want deploy %s", o.reply, c.Top)
	}
}

// addNixosBuild records a build of repo whose nixosConfigurations.<attr>
// ended with status and output out, as the orchestrator does.
func addNixosBuild(t *testing.T, d *db.DB, repo, attr, status, out, drv string) int64 {
	t.Helper()
	ctx := t.Context()
	b, created, err := d.CreateBuild(ctx, repo, "api", t.TempDir())
	if err != nil || !created {
		t.Fatalf("create build: %v (created %v)", err, created)
	}
	now := time.Now()
	if err := d.StartBuild(ctx, b.ID, now); err != nil {
		t.Fatal(err)
	}
	id, err := d.StartResult(ctx, b.ID, attr, "nixos", now)
	if err != nil {
		t.Fatal(err)
	}
	var outs []string
	if out != "" {
		outs = []string{out}
	}
	if err := d.FinishResult(ctx, id, status, drv, outs, "", now); err != nil {
		t.Fatal(err)
	}
	if err := d.FinishBuild(ctx, b.ID, db.StatusSuccess, "", now); err != nil {
		t.Fatal(err)
	}
	return b.ID
}

func TestPolicyAuto(t *testing.T) { eachDB(t, testPolicyAuto) }

func testPolicyAuto(t *testing.T, onDB ...func(*fleet.Config)) {
	e, a, c := policyEnv(t, onDB...)
	ctx := t.Context()
	if err := e.svc.SetPolicy(ctx, admin, "chesty", fleet.Policy{Policy: db.PolicyAuto, Repository: testRepo}, ""); err != nil {
		t.Fatal(err)
	}
	if r := e.ok(a, c.Leaf); r.Reason != "policy:auto:no-successful-build" || r.Deploy || r.Target != c.Leaf {
		t.Fatalf("auto before any build = %+v", r)
	}
	// Builds of other configurations, other repositories, other kinds and
	// failed ones do not count.
	addNixosBuild(t, e.db, testRepo, "other-host", db.ResultSuccess, c.Middle, c.Derivers[c.Middle])
	addNixosBuild(t, e.db, "elsewhere", "chesty", db.ResultSuccess, c.Middle, c.Derivers[c.Middle])
	addNixosBuild(t, e.db, testRepo, "chesty", db.ResultFailed, "", "")
	if r := e.ok(a, c.Leaf); r.Reason != "policy:auto:no-successful-build" || r.Deploy {
		t.Fatalf("auto with no build of its own = %+v", r)
	}

	drv := c.Derivers[c.Top]
	addNixosBuild(t, e.db, testRepo, "chesty", db.ResultSuccess, c.Top, drv)
	r := e.ok(a, c.Leaf)
	if r.Reason != "policy:update" || !r.Deploy || r.Target != c.Top {
		t.Fatalf("auto with a new build = %+v, want policy:update to %s", r, c.Top)
	}
	if h := e.host("chesty"); h.Desired != c.Top || h.DesiredDrv != drv || h.DriftSince == nil {
		t.Fatalf("host = desired %q drv %q drift %v", h.Desired, h.DesiredDrv, h.DriftSince)
	}
	r = e.ok(a, c.Top)
	if r.Reason != "policy:up-to-date" || r.Deploy || r.Target != c.Top {
		t.Fatalf("auto, running the newest build = %+v, want policy:up-to-date", r)
	}
	if h := e.host("chesty"); h.DriftSince != nil {
		t.Fatalf("drift since %v while up to date", h.DriftSince)
	}

	// A newer build whose output is no longer in the store is not handed out.
	ghost := ghostPath(t, "nixos-system-chesty-25.05")
	addNixosBuild(t, e.db, testRepo, "chesty", db.ResultSuccess, ghost, "")
	r = e.ok(a, c.Top)
	if r.Reason != "verification-failed" || r.Deploy || r.Target != c.Top {
		t.Fatalf("auto with the newest output gone = %+v", r)
	}
	if h := e.host("chesty"); !strings.Contains(h.TargetError, ghost) {
		t.Fatalf("target_error = %q, want it to name %s", h.TargetError, ghost)
	}

	// configuration names another nixosConfigurations attribute.
	if err := e.svc.SetPolicy(ctx, admin, "chesty", fleet.Policy{Policy: db.PolicyAuto, Repository: testRepo, Configuration: "other-host"}, ""); err != nil {
		t.Fatal(err)
	}
	if r := e.ok(a, c.Top); r.Reason != "policy:update" || !r.Deploy || r.Target != c.Middle {
		t.Fatalf("auto following other-host = %+v, want %s", r, c.Middle)
	}

	// A successful result without outputs must not break the heartbeat.
	addNixosBuild(t, e.db, testRepo, "other-host", db.ResultSuccess, "", "")
	if r := e.ok(a, c.Top); r.Deploy || r.Target != c.Top {
		t.Fatalf("auto with an empty output = %+v, want no deploy", r)
	}
	if h := e.host("chesty"); !strings.Contains(h.TargetError, "no output") {
		t.Fatalf("target_error = %q, want it to say the build has no output", h.TargetError)
	}
}

func TestAudit(t *testing.T) { eachDB(t, testAudit) }

func testAudit(t *testing.T, onDB ...func(*fleet.Config)) {
	e := newEnv(t, onDB...)
	ctx := t.Context()
	a, b := newAgent(t, "chesty"), newAgent(t, "pending-one")
	target := systemPath(t, "chesty")
	addAt := e.clock.Now()
	if err := e.svc.AddHost(ctx, admin, a.name, a.pub(), fleet.Policy{}); err != nil {
		t.Fatal(err)
	}
	// b enrols itself: that is not an admin action.
	if o := e.beat(b, e.heartbeat(b, "")); o.code != http.StatusForbidden {
		t.Fatalf("enrolment = %d", o.code)
	}
	bob := fleet.Actor{Name: "bob", Remote: "192.0.2.11:5000"}
	steps := []struct {
		do     func() error
		actor  fleet.Actor
		action string
		host   string
		detail string
	}{
		{func() error { return e.svc.Approve(ctx, bob, b.name) }, bob, "approve", b.name, b.pub()},
		{func() error { return e.svc.SetTarget(ctx, admin, a.name, target) }, admin, "set-target", a.name, "manual → manual(" + target + ")"},
		{func() error {
			return e.svc.SetPolicy(ctx, bob, a.name, fleet.Policy{Policy: db.PolicyAuto, Repository: testRepo, Configuration: "chesty"}, "")
		}, bob, "set-policy", a.name, "manual(" + target + ") → auto(infra#chesty)"},
		{func() error {
			return e.svc.SetPolicy(ctx, fleet.Actor{Remote: "192.0.2.12:1"}, a.name, fleet.Policy{Policy: db.PolicyManual}, "")
		},
			fleet.Actor{Name: "anonymous", Remote: "192.0.2.12:1"}, "set-policy", a.name, "auto(infra#chesty) → manual"},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.action, err)
		}
	}
	// Approving an approved host changes nothing and records nothing.
	if err := e.svc.Approve(ctx, bob, b.name); err != nil {
		t.Fatal(err)
	}
	log, err := e.db.AuditLog(ctx, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(log) != 1+len(steps) {
		t.Fatalf("audit log has %d entries, want %d: %+v", len(log), 1+len(steps), log)
	}
	add := log[len(log)-1]
	if add.Action != "add-host" || add.Actor != "alice" || add.Host != "chesty" || add.Remote != admin.Remote || !strings.Contains(add.Detail, a.pub()) || !add.At.Equal(addAt) {
		t.Errorf("first entry = %+v, want alice's add-host of chesty with its key", add)
	}
	for i, s := range steps {
		got := log[len(steps)-1-i] // newest first
		if got.Action != s.action || got.Actor != s.actor.Name || got.Remote != s.actor.Remote || got.Host != s.host || !strings.Contains(got.Detail, s.detail) {
			t.Errorf("entry for %s = %+v, want actor %+v, host %s, detail containing %q", s.action, got, s.actor, s.host, s.detail)
		}
	}
	if h := e.host(b.name); h.Status != db.HostApproved {
		t.Errorf("approved host status = %s", h.Status)
	}
	only, err := e.db.AuditLog(ctx, b.name, 100)
	if err != nil || len(only) != 1 || only[0].Action != "approve" {
		t.Fatalf("audit log of %s = %+v (%v), want its approval", b.name, only, err)
	}
}

func TestAdminValidation(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	a := newAgent(t, "chesty")
	e.add(a, fleet.Policy{})
	key := newAgent(t, "fresh").pub()
	path := systemPath(t, "x")
	invalid := []struct {
		what string
		err  error
	}{
		{"unknown policy", e.svc.SetPolicy(ctx, admin, "chesty", fleet.Policy{Policy: "yolo"}, "")},
		{"empty policy", e.svc.SetPolicy(ctx, admin, "chesty", fleet.Policy{}, "")},
		{"auto with an unknown repository", e.svc.SetPolicy(ctx, admin, "chesty", fleet.Policy{Policy: db.PolicyAuto, Repository: "nope"}, "")},
		{"auto without a repository", e.svc.SetPolicy(ctx, admin, "chesty", fleet.Policy{Policy: db.PolicyAuto}, "")},
		{"auto with a bad configuration", e.svc.SetPolicy(ctx, admin, "chesty", fleet.Policy{Policy: db.PolicyAuto, Repository: testRepo, Configuration: "a b"}, "")},
		{"pinned without a target", e.svc.SetPolicy(ctx, admin, "chesty", fleet.Policy{Policy: db.PolicyPinned}, "")},
		{"pinned to a non-store path", e.svc.SetPolicy(ctx, admin, "chesty", fleet.Policy{Policy: db.PolicyPinned, Target: "/etc/nixos"}, "")},
		{"manual target not a store path", e.svc.SetTarget(ctx, admin, "chesty", "/run/current-system")},
		{"add with a bad public key", e.svc.AddHost(ctx, admin, "fresh", "not-a-key", fleet.Policy{})},
		{"add with a secret key", e.svc.AddHost(ctx, admin, "fresh", a.key.String(), fleet.Policy{})},
		{"add with a bad name", e.svc.AddHost(ctx, admin, "fresh.example.com", key, fleet.Policy{})},
		{"add with a bad policy", e.svc.AddHost(ctx, admin, "fresh", key, fleet.Policy{Policy: "pinned"})},
		{"add auto with an unknown repository", e.svc.AddHost(ctx, admin, "fresh", key, fleet.Policy{Policy: db.PolicyAuto, Repository: "nope"})},
	}
	for _, c := range invalid {
		if !errors.Is(c.err, fleet.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", c.what, c.err)
		}
	}
	if _, err := e.db.Host(ctx, "fresh"); !errors.Is(err, db.ErrNotFound) {
		t.Errorf("an invalid add created the host: %v", err)
	}
	if h := e.host("chesty"); h.Policy != db.PolicyManual || h.Target != "" {
		t.Errorf("invalid changes changed the host: %+v", h)
	}
	if err := e.svc.AddHost(ctx, admin, "chesty", key, fleet.Policy{}); !errors.Is(err, db.ErrExists) {
		t.Errorf("add a taken name: %v, want ErrExists", err)
	}
	if err := e.svc.AddHost(ctx, admin, "other", a.pub(), fleet.Policy{}); !errors.Is(err, db.ErrExists) {
		t.Errorf("add a taken key: %v, want ErrExists", err)
	}
	if err := e.svc.Approve(ctx, admin, "ghost"); !errors.Is(err, db.ErrNotFound) {
		t.Errorf("approve an unknown host: %v, want ErrNotFound", err)
	}
	if err := e.svc.SetTarget(ctx, admin, "ghost", path); !errors.Is(err, db.ErrNotFound) {
		t.Errorf("set the target of an unknown host: %v, want ErrNotFound", err)
	}
	// Valid ones, with every policy.
	if err := e.svc.AddHost(ctx, admin, "pinned-one", key, fleet.Policy{Policy: db.PolicyPinned, Target: path}); err != nil {
		t.Fatal(err)
	}
	if h := e.host("pinned-one"); h.Status != db.HostApproved || h.Policy != db.PolicyPinned || h.Target != path {
		t.Errorf("added host = %+v", h)
	}
	if err := e.svc.AddHost(ctx, admin, "auto-one", newAgent(t, "auto").pub(), fleet.Policy{Policy: db.PolicyAuto, Repository: testRepo, Configuration: "chesty"}); err != nil {
		t.Fatal(err)
	}
	if log, _ := e.db.AuditLog(ctx, "", 100); len(log) != 3 {
		t.Errorf("audit log has %d entries, want the 3 adds only", len(log))
	}
}

// apiCall sends a JSON admin request as actor and decodes the answer.
func apiCall(t *testing.T, e *env, method, path, actor string, body any, wantCode int, out any) {
	t.Helper()
	var data []byte
	if s, ok := body.(string); ok {
		data = []byte(s)
	} else if body != nil {
		var err error
		if data, err = json.Marshal(body); err != nil {
			t.Fatal(err)
		}
	}
	h := http.Header{"Content-Type": {"application/json"}}
	if actor != "" {
		// The audit log names the token the request authenticated with.
		if e.tokens[actor] == "" {
			c, err := (&auth.Tokens{DB: e.db}).Create(t.Context(), actor, auth.RoleAdmin, 0, "test")
			if err != nil {
				t.Fatal(err)
			}
			if e.tokens == nil {
				e.tokens = map[string]string{}
			}
			e.tokens[actor] = c.Token
		}
		h.Set("Authorization", "Bearer "+e.tokens[actor])
	}
	code, resp := e.api.Do(t, method, path, data, h)
	if code != wantCode {
		t.Fatalf("%s %s %s = %d %s, want %d", method, path, data, code, resp, wantCode)
	}
	if out != nil {
		if err := json.Unmarshal(resp, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, resp)
		}
	}
}

func TestAdminAPI(t *testing.T) {
	e := newEnv(t).withAPI()
	e.viaHTTP = true
	c := e.closure
	a, p := newAgent(t, "chesty"), newAgent(t, "pending-one")

	var created db.Host
	apiCall(t, e, "POST", "/api/v1/hosts", "carol", map[string]string{"name": "chesty", "public_key": a.pub(), "policy": "manual", "target": c.Top}, 201, &created)
	if created.Name != "chesty" || created.Status != db.HostApproved || created.Policy != db.PolicyManual || created.Target != c.Top || created.PublicKey != a.pub() {
		t.Fatalf("created = %+v", created)
	}
	for _, bad := range []struct {
		body any
		code int
	}{
		{map[string]string{"name": "chesty", "public_key": newAgent(t, "x").pub()}, 409},
		{map[string]string{"name": "other", "public_key": a.pub()}, 409},
		{map[string]string{"name": "other", "public_key": "junk"}, 400},
		{map[string]string{"name": "bad name", "public_key": newAgent(t, "y").pub()}, 400},
		{map[string]string{"name": "other", "public_key": newAgent(t, "z").pub(), "policy": "auto", "repository": "nope"}, 400},
		{map[string]string{"name": "other", "public_key": newAgent(t, "w").pub(), "color": "red"}, 400},
		{`{"name": "other",`, 400},
	} {
		apiCall(t, e, "POST", "/api/v1/hosts", "carol", bad.body, bad.code, nil)
	}

	// Heartbeats: chesty is told to move to its target; pending-one enrols.
	if r := e.ok(a, c.Leaf); !r.Deploy || r.Target != c.Top {
		t.Fatalf("reply = %+v", r)
	}
	if o := e.beat(p, e.heartbeat(p, c.Leaf)); o.code != 403 || !o.pending {
		t.Fatalf("enrolment = %d %q", o.code, o.detail)
	}

	var list []fleet.HostView
	apiCall(t, e, "GET", "/api/v1/hosts", "", nil, 200, &list)
	if len(list) != 2 || list[0].Name != "chesty" || list[1].Name != "pending-one" || list[1].Status != db.HostPending {
		t.Fatalf("hosts = %+v", list)
	}
	if list[0].Current != c.Leaf || list[0].Desired != c.Top || list[0].Drift == "" || !list[0].Online || list[0].Heartbeats != nil {
		t.Fatalf("chesty in the list = %+v", list[0])
	}
	if k := alertKinds(&list[1]); !slices.Equal(k, []string{"enrolled"}) {
		t.Fatalf("pending host alerts = %q", k)
	}

	for path, code := range map[string]int{
		"/api/v1/hosts/nobody/approve": 404, "/api/v1/hosts/bad.name/approve": 400,
	} {
		apiCall(t, e, "POST", path, "carol", nil, code, nil)
	}
	var approved map[string]string
	apiCall(t, e, "POST", "/api/v1/hosts/pending-one/approve", "dave", nil, 200, &approved)
	if approved["status"] != "approved" || approved["host"] != "pending-one" {
		t.Fatalf("approve = %v", approved)
	}
	if r := e.ok(p, c.Leaf); r.Deploy {
		t.Fatalf("approved host reply = %+v", r)
	}

	apiCall(t, e, "POST", "/api/v1/hosts/chesty/target", "carol", map[string]string{"target": "/etc/nixos"}, 400, nil)
	apiCall(t, e, "POST", "/api/v1/hosts/nobody/target", "carol", map[string]string{"target": c.Middle}, 404, nil)
	apiCall(t, e, "POST", "/api/v1/hosts/chesty/target", "carol", `{"target": 7}`, 400, nil)
	var set map[string]any
	apiCall(t, e, "POST", "/api/v1/hosts/chesty/target", "carol", map[string]string{"target": c.Middle}, 200, &set)
	if set["target"] != c.Middle || set["policy"] != "manual" {
		t.Fatalf("set target = %v", set)
	}
	apiCall(t, e, "POST", "/api/v1/hosts/chesty/policy", "erin", map[string]string{"policy": "auto", "repository": "nope"}, 400, nil)
	var pinErr map[string]string
	apiCall(t, e, "POST", "/api/v1/hosts/chesty/policy", "erin", map[string]string{"policy": "pinned"}, 400, &pinErr)
	if d := pinErr["detail"]; !strings.Contains(d, "a pinned host needs a target") || !strings.Contains(d, "--target STOREPATH") {
		t.Errorf("pinned without a target: detail %q does not say a pinned host needs --target", d)
	}
	apiCall(t, e, "POST", "/api/v1/hosts/nobody/policy", "erin", map[string]string{"policy": "manual"}, 404, nil)
	apiCall(t, e, "POST", "/api/v1/hosts/chesty/policy", "erin", map[string]string{"policy": "pinned", "target": c.Top}, 200, &set)
	if pol, _ := set["policy"].(map[string]any); pol["policy"] != "pinned" || pol["target"] != c.Top {
		t.Fatalf("set policy = %v", set)
	}
	r := e.ok(a, c.Leaf)
	if r.Reason != "policy:pinned" || r.Target != c.Top || !r.Deploy {
		t.Fatalf("after pinning = %+v", r)
	}
	hb := e.heartbeat(a, c.Top)
	hb.Deployment = &fleetproto.DeploymentReport{Target: c.Top, Previous: c.Leaf, Status: "success", StartedAt: e.clock.Now(), DurationMS: 1200}
	e.beat(a, hb)

	var v fleet.HostView
	apiCall(t, e, "GET", "/api/v1/hosts/chesty", "", nil, 200, &v)
	if v.Name != "chesty" || v.Current != c.Top || v.Policy != "pinned" || len(v.Heartbeats) != 2 || len(v.Deployments) != 1 ||
		v.LastDeployment == nil || v.LastDeployment.DurationMS != 1200 || len(v.Audit) != 3 {
		t.Fatalf("host detail = %+v: heartbeats %d deployments %d audit %d", v.Host, len(v.Heartbeats), len(v.Deployments), len(v.Audit))
	}
	var raw map[string]json.RawMessage
	apiCall(t, e, "GET", "/api/v1/hosts/pending-one", "", nil, 200, &raw)
	for _, k := range []string{"name", "status", "policy", "current", "desired", "desired_reason", "target_error", "drift", "online", "last_seen",
		"last_deployment", "alerts", "heartbeats", "events", "audit", "public_key", "fingerprint"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("GET /api/v1/hosts/pending-one lacks %q: %s", k, raw)
		}
	}
	if _, ok := raw["facts"]; ok {
		t.Error("host detail exposes raw facts")
	}
	apiCall(t, e, "GET", "/api/v1/hosts/nobody", "", nil, 404, nil)
	apiCall(t, e, "GET", "/api/v1/hosts/bad.name", "", nil, 400, nil)

	var log []db.AuditEntry
	apiCall(t, e, "GET", "/api/v1/audit", "", nil, 200, &log)
	var got []string
	for _, l := range log {
		got = append(got, l.Actor+":"+l.Action+":"+l.Host)
		if !strings.HasPrefix(l.Remote, "127.0.0.1:") {
			t.Errorf("audit remote = %q, want the client's address", l.Remote)
		}
	}
	want := []string{"token:erin:set-policy:chesty", "token:carol:set-target:chesty", "token:dave:approve:pending-one", "token:carol:add-host:chesty"}
	if !slices.Equal(got, want) {
		t.Fatalf("audit log = %q, want %q", got, want)
	}
	apiCall(t, e, "GET", "/api/v1/audit?host=pending-one", "", nil, 200, &log)
	if len(log) != 1 || log[0].Action != "approve" {
		t.Fatalf("audit of pending-one = %+v", log)
	}
	apiCall(t, e, "GET", "/api/v1/audit?limit=2", "", nil, 200, &log)
	if len(log) != 2 {
		t.Fatalf("audit with limit=2 has %d entries", len(log))
	}
	apiCall(t, e, "GET", "/api/v1/audit?limit=0", "", nil, 400, nil)
	apiCall(t, e, "GET", "/api/v1/audit?host=bad.name", "", nil, 400, nil)
	// Without a token, the operator on the server itself is "loopback",
	// whatever a header claims.
	code, body := e.api.Do(t, "POST", "/api/v1/hosts/chesty/target", []byte(`{"target": "`+c.Top+`"}`),
		http.Header{"Content-Type": {"application/json"}, "X-Crystal-Forge-Actor": {"mallory"}})
	if code != 200 {
		t.Fatalf("set-target from loopback = %d %s", code, body)
	}
	apiCall(t, e, "GET", "/api/v1/audit?limit=1", "", nil, 200, &log)
	if log[0].Actor != "loopback" || !strings.HasPrefix(log[0].Remote, "127.0.0.1:") {
		t.Fatalf("audit entry without a token = %+v, want loopback from 127.0.0.1", log[0])
	}

	// A token without the admin role changes nothing, even from loopback:
	// a token sent is the identity.
	before, err := e.db.Host(t.Context(), "chesty")
	if err != nil {
		t.Fatal(err)
	}
	ro, err := (&auth.Tokens{DB: e.db}).Create(t.Context(), "viewer", auth.RoleTrigger, 0, "test")
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/api/v1/hosts/chesty/target", "/api/v1/hosts/chesty/policy", "/api/v1/hosts/pending-one/approve", "/api/v1/hosts"} {
		code, body := e.api.Do(t, "POST", path, []byte(`{"target": "`+c.Middle+`", "policy": "manual"}`),
			http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer " + ro.Token}})
		if code != 403 || !strings.Contains(string(body), "this needs admin") {
			t.Errorf("POST %s with a trigger token = %d %s, want 403", path, code, body)
		}
	}
	after, err := e.db.Host(t.Context(), "chesty")
	if err != nil {
		t.Fatal(err)
	}
	if after.Target != before.Target || after.Policy != before.Policy || !reflect.DeepEqual(after.PolicySetAt, before.PolicySetAt) {
		t.Errorf("host changed by refused requests: %+v → %+v", before, after)
	}
	apiCall(t, e, "GET", "/api/v1/audit?limit=1", "", nil, 200, &log)
	if log[0].Actor != "loopback" {
		t.Errorf("refused requests were audited: %+v", log[0])
	}
}

// The heartbeat and the admin API only exist when the server has a fleet.
func TestNoFleetAPI(t *testing.T) {
	s := ts.StartBuildServer(t, ts.BuildServerConfig{})
	for _, r := range []struct{ method, path string }{{"POST", fleetproto.Path}, {"GET", "/api/v1/hosts"}, {"GET", "/api/v1/audit"}} {
		if code, _ := s.Do(t, r.method, r.path, nil, nil); code != http.StatusNotFound && code != http.StatusMethodNotAllowed {
			t.Errorf("%s %s without a fleet = %d", r.method, r.path, code)
		}
	}
}

// TestConfigureHosts: the configuration file's hosts are applied approved;
// a key another host already has, or a target outside the store, is
// refused with an error naming the file's key, not a database constraint.
func TestConfigureHosts(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	a, b := newAgent(t, "alpha"), newAgent(t, "beta")
	target := systemPath(t, "alpha")
	if err := e.svc.ConfigureHosts(ctx, []config.Host{{Name: "alpha", PublicKey: a.pub(), Policy: "pinned", Target: target}}); err != nil {
		t.Fatal(err)
	}
	if h := e.host("alpha"); h.Status != db.HostApproved || h.Policy != db.PolicyPinned || h.Target != target || h.PublicKey != a.pub() {
		t.Errorf("configured host = %+v, want approved, pinned to %s", h, target)
	}

	// beta enrols itself with its key; then the file names that key for
	// another host.
	e.beat(b, e.heartbeat(b, systemPath(t, "beta")))
	for _, tt := range []struct {
		name string
		host config.Host
		want []string
	}{
		{"key of another host", config.Host{Name: "gamma", PublicKey: b.pub()},
			[]string{"config: hosts[1].public_key", `host "beta" (pending)`, `name this entry "beta"`}},
		{"target in another store", config.Host{Name: "gamma", PublicKey: newAgent(t, "gamma").pub(), Policy: "pinned", Target: "/other/store/" + strings.TrimPrefix(target, "/nix/store/")},
			[]string{"config: hosts[1] (gamma)", "target must be a store path like /nix/store/"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := e.svc.ConfigureHosts(ctx, []config.Host{{Name: "alpha", PublicKey: a.pub()}, tt.host})
			if err == nil {
				t.Fatal("ConfigureHosts accepted it")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "UNIQUE") || strings.Contains(err.Error(), "invalid request") {
				t.Errorf("error %q speaks database or HTTP, not configuration", err)
			}
		})
	}
	if h := e.host("beta"); h.Status != db.HostPending || h.PublicKey != b.pub() {
		t.Errorf("beta after the refused configuration = %+v, want untouched", h)
	}
}

// TestPolicyAutoWaitsForPush: with fleet_cache set, an auto host is handed
// only a build whose push to that cache succeeded.
func TestPolicyAutoWaitsForPush(t *testing.T) {
	e := newEnv(t, func(c *fleet.Config) { c.FleetCache = "central" })
	a := newAgent(t, "chesty")
	e.add(a, fleet.Policy{})
	c := e.closure
	ctx := t.Context()
	if err := e.svc.SetPolicy(ctx, admin, "chesty", fleet.Policy{Policy: db.PolicyAuto, Repository: testRepo}, ""); err != nil {
		t.Fatal(err)
	}
	push := func(buildID int64, dest string, state db.PushState) {
		t.Helper()
		j, err := e.db.CreatePush(ctx, buildID, dest, "http://cache", []string{"x"}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if err := e.db.UpdatePush(ctx, j.ID, state, db.PushProgress{Attempts: 1}, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	first := addNixosBuild(t, e.db, testRepo, "chesty", db.ResultSuccess, c.Middle, c.Derivers[c.Middle])
	if r := e.ok(a, c.Leaf); r.Reason != "policy:auto:waiting-for-push" || r.Deploy || r.Target != c.Leaf {
		t.Fatalf("auto before the push = %+v, want waiting-for-push and stay", r)
	}
	push(first, "elsewhere", db.PushSucceeded) // not the fleet's cache
	push(first, "central", db.PushRunning)
	if r := e.ok(a, c.Leaf); r.Reason != "policy:auto:waiting-for-push" || r.Deploy {
		t.Fatalf("auto while the push runs = %+v", r)
	}
	push(first, "central", db.PushSucceeded)
	if r := e.ok(a, c.Leaf); r.Reason != "policy:update" || !r.Deploy || r.Target != c.Middle {
		t.Fatalf("auto after the push = %+v, want deploy %s", r, c.Middle)
	}
	// A newer build whose push failed: the host keeps the pushed one.
	second := addNixosBuild(t, e.db, testRepo, "chesty", db.ResultSuccess, c.Top, c.Derivers[c.Top])
	push(second, "central", db.PushFailed)
	if r := e.ok(a, c.Middle); r.Reason != "policy:up-to-date" || r.Deploy || r.Target != c.Middle {
		t.Fatalf("auto with the newest push failed = %+v, want to stay on %s", r, c.Middle)
	}
	push(second, "central", db.PushSucceeded)
	if r := e.ok(a, c.Middle); !r.Deploy || r.Target != c.Top {
		t.Fatalf("auto after the newest push = %+v, want deploy %s", r, c.Top)
	}
}
