package fleet_test

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/fleet"
	"github.com/crystal-forge/crystal-forge/internal/fleetproto"
)

// First contacts are rate-limited per address and capped in number; a
// refused one stores nothing.
func TestEnrolmentLimits(t *testing.T) {
	e := newEnv(t, func(c *fleet.Config) { c.EnrolPerHour = 3; c.MaxPending = 4 })
	enrol := func(name string) outcome {
		t.Helper()
		a := newAgent(t, name)
		return e.beat(a, e.heartbeat(a, ""))
	}
	for i := range 3 {
		if o := enrol(fmt.Sprintf("h%d", i)); o.code != http.StatusForbidden || !o.pending {
			t.Fatalf("enrolment %d = %d %s, want 403 pending", i, o.code, o.detail)
		}
	}
	o := enrol("h3")
	if o.code != http.StatusTooManyRequests || !strings.Contains(o.detail, "too many new hosts") {
		t.Fatalf("4th enrolment within the hour = %d %q, want 429", o.code, o.detail)
	}
	if _, err := e.db.Host(t.Context(), "h3"); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("refused enrolment stored host h3: %v", err)
	}
	e.clock.Add(time.Hour)
	if o := enrol("h3"); o.code != http.StatusForbidden || !o.pending {
		t.Fatalf("enrolment an hour later = %d %s", o.code, o.detail)
	}
	// Four pending: the cap.
	o = enrol("h4")
	if o.code != http.StatusServiceUnavailable || !strings.Contains(o.detail, "4 hosts are already waiting") {
		t.Fatalf("enrolment beyond the cap = %d %q, want 503", o.code, o.detail)
	}
	if n, err := e.db.CountHosts(t.Context(), db.HostPending); err != nil || n != 4 {
		t.Fatalf("pending hosts = %d (%v), want 4", n, err)
	}
	// Removing one makes room.
	if err := e.svc.RemoveHost(t.Context(), admin, "h0"); err != nil {
		t.Fatal(err)
	}
	if o := enrol("h4"); o.code != http.StatusForbidden || !o.pending {
		t.Fatalf("enrolment after a removal = %d %s", o.code, o.detail)
	}
}

// Oversized strings in a heartbeat are refused (or, for an error report,
// truncated) before anything is stored.
func TestHeartbeatSizeLimits(t *testing.T) {
	e := newEnv(t)
	a := newAgent(t, "chesty")
	e.add(a, fleet.Policy{})
	for _, tc := range []struct {
		name string
		edit func(*fleetproto.Heartbeat)
	}{
		{"fingerprint", func(hb *fleetproto.Heartbeat) { hb.Fingerprint = strings.Repeat("f", 257) }},
		{"agent", func(hb *fleetproto.Heartbeat) { hb.Agent = strings.Repeat("a", 65) }},
		{"facts", func(hb *fleetproto.Heartbeat) { hb.Facts = map[string]any{"x": strings.Repeat("x", 17<<10)} }},
		{"deployment", func(hb *fleetproto.Heartbeat) {
			hb.Deployment = &fleetproto.DeploymentReport{Status: strings.Repeat("s", 301)}
		}},
	} {
		hb := e.heartbeat(a, "")
		tc.edit(&hb)
		if o := e.beat(a, hb); o.code != http.StatusBadRequest {
			t.Errorf("%s too large: %d %s, want 400", tc.name, o.code, o.detail)
		}
	}
	if h := e.host("chesty"); h.LastSeen != nil || h.Fingerprint != "" {
		t.Fatalf("refused heartbeats were recorded: %+v", h)
	}
	hb := e.heartbeat(a, "")
	hb.Deployment = &fleetproto.DeploymentReport{Status: fleetproto.DeployFailed, Error: strings.Repeat("e", 100<<10), StartedAt: e.clock.Now()}
	if o := e.beat(a, hb); o.code != http.StatusOK {
		t.Fatalf("heartbeat with a long error = %d %s", o.code, o.detail)
	}
	deps, err := e.db.Deployments(t.Context(), "chesty", 1)
	if err != nil || len(deps) != 1 || len(deps[0].Error) > 5<<10 || !strings.HasSuffix(deps[0].Error, "(truncated)") {
		t.Fatalf("stored deployment error: %d bytes (%v)", len(deps[0].Error), err)
	}
}

// A name squatted by an impostor's enrolment is recovered without a
// restart: rekey gives it the real agent's key (approved), or remove
// deletes it so the real host can enrol.
func TestRekeyAndRemove(t *testing.T) {
	e := newEnv(t)
	impostor, real := newAgent(t, "h2"), newAgent(t, "h2")
	if o := e.beat(impostor, e.heartbeat(impostor, "")); !o.pending {
		t.Fatalf("impostor enrolment = %d %s", o.code, o.detail)
	}
	if o := e.beat(real, e.heartbeat(real, "")); o.code != http.StatusUnauthorized {
		t.Fatalf("the real host after the impostor = %d %s, want 401", o.code, o.detail)
	}
	if err := e.svc.Rekey(t.Context(), admin, "h2", "not a key"); !errors.Is(err, fleet.ErrInvalid) {
		t.Fatalf("rekey with a bad key: %v", err)
	}
	if err := e.svc.Rekey(t.Context(), admin, "nobody", real.pub()); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("rekey of an unknown host: %v", err)
	}
	if err := e.svc.Rekey(t.Context(), admin, "h2", real.pub()); err != nil {
		t.Fatal(err)
	}
	e.ok(real, "")
	if o := e.beat(impostor, e.heartbeat(impostor, "")); o.code != http.StatusUnauthorized {
		t.Fatalf("the impostor after rekey = %d %s, want 401", o.code, o.detail)
	}
	// Another host's key cannot be taken.
	other := newAgent(t, "h3")
	e.add(other, fleet.Policy{})
	if err := e.svc.Rekey(t.Context(), admin, "h2", other.pub()); !errors.Is(err, db.ErrExists) {
		t.Fatalf("rekey to another host's key: %v", err)
	}

	if err := e.svc.RemoveHost(t.Context(), admin, "h2"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.Host(t.Context(), "h2"); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("removed host still there: %v", err)
	}
	if hb, err := e.db.Heartbeats(t.Context(), "h2", 10); err != nil || len(hb) != 0 {
		t.Fatalf("removed host's heartbeats: %d (%v)", len(hb), err)
	}
	if err := e.svc.RemoveHost(t.Context(), admin, "h2"); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("removing twice: %v", err)
	}
	log, err := e.db.AuditLog(t.Context(), "h2", 10)
	if err != nil || len(log) != 2 || log[0].Action != "remove-host" || log[1].Action != "rekey" || log[1].Actor != "alice" {
		t.Fatalf("audit of h2 = %+v (%v)", log, err)
	}
	// The name is free again: the real agent enrols afresh.
	if o := e.beat(real, e.heartbeat(real, "")); !o.pending {
		t.Fatalf("enrolment after removal = %d %s", o.code, o.detail)
	}
}
