package db

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// TestHosts: registration, conflicts, configured hosts and policy times.
func TestHosts(t *testing.T) {
	forEachDB(t, func(t *testing.T, d *DB) {
		ctx := t.Context()
		h := &Host{Name: "web1", PublicKey: "key1", Status: HostPending, Policy: PolicyManual}
		if err := d.CreateHost(ctx, h); err != nil {
			t.Fatal(err)
		}
		for _, dup := range []*Host{
			{Name: "web1", PublicKey: "other", Status: HostPending, Policy: PolicyManual},
			{Name: "web2", PublicKey: "key1", Status: HostPending, Policy: PolicyManual},
		} {
			if err := d.CreateHost(ctx, dup); !errors.Is(err, ErrExists) {
				t.Errorf("CreateHost(%s, %s) = %v, want ErrExists", dup.Name, dup.PublicKey, err)
			}
		}
		if err := d.SetHostStatus(ctx, "absent", HostApproved); !errors.Is(err, ErrNotFound) {
			t.Errorf("SetHostStatus of an absent host = %v, want ErrNotFound", err)
		}
		at := time.UnixMilli(1_700_000_000_000).UTC()
		if err := d.SetHostPolicy(ctx, "web1", PolicyPinned, "/nix/store/t", "", "", at); err != nil {
			t.Fatal(err)
		}
		got, err := d.Host(ctx, "web1")
		if err != nil || got.Policy != PolicyPinned || got.Target != "/nix/store/t" || got.PolicySetAt == nil || !got.PolicySetAt.Equal(at) {
			t.Fatalf("Host after SetHostPolicy = %+v, %v", got, err)
		}

		// A configured host: upserted, approved; its policy time moves only
		// when what it should run changes.
		cfg := &Host{Name: "db1", PublicKey: "key2", Policy: PolicyAuto, Repository: "infra", Configuration: "db1"}
		if err := d.UpsertHost(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		first, _ := d.Host(ctx, "db1")
		if first.Status != HostApproved || first.PolicySetAt != nil {
			t.Fatalf("new configured host = %+v", first)
		}
		if err := d.UpsertHost(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		if same, _ := d.Host(ctx, "db1"); same.PolicySetAt != nil {
			t.Errorf("unchanged configuration set policy_set_at: %+v", same)
		}
		cfg.Configuration = "db1-new"
		if err := d.UpsertHost(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		if changed, _ := d.Host(ctx, "db1"); changed.Configuration != "db1-new" || changed.PolicySetAt == nil {
			t.Errorf("changed configuration = %+v, want policy_set_at", changed)
		}
		hosts, err := d.Hosts(ctx)
		if err != nil || len(hosts) != 2 || hosts[0].Name != "db1" || hosts[1].Name != "web1" {
			t.Errorf("Hosts = %v, %v", hosts, err)
		}
	})
}

// TestHeartbeats: replays are refused, identical heartbeats compacted,
// drift kept, and concurrent heartbeats of one host each counted once.
func TestHeartbeats(t *testing.T) {
	forEachDB(t, func(t *testing.T, d *DB) {
		ctx := t.Context()
		if err := d.CreateHost(ctx, &Host{Name: "h", PublicKey: "k", Status: HostApproved, Policy: PolicyManual}); err != nil {
			t.Fatal(err)
		}
		t0 := time.UnixMilli(1_700_000_000_000).UTC()
		beat := func(ts int64, current string) error {
			_, err := d.RecordBeat(ctx, Beat{Host: "h", Current: current, Fingerprint: "fp", TS: ts, At: t0.Add(time.Duration(ts) * time.Millisecond)})
			return err
		}
		for i, ts := range []int64{1, 2, 3} {
			if err := beat(ts, "/nix/store/a"); err != nil {
				t.Fatalf("beat %d: %v", i, err)
			}
		}
		if err := beat(3, "/nix/store/a"); !errors.Is(err, ErrReplay) {
			t.Errorf("replayed heartbeat = %v, want ErrReplay", err)
		}
		before, err := d.RecordBeat(ctx, Beat{Host: "h", Current: "/nix/store/b", Fingerprint: "fp", TS: 4, At: t0})
		if err != nil || before.Current != "/nix/store/a" || before.LastTS != 3 {
			t.Fatalf("RecordBeat returned the host before as %+v, %v", before, err)
		}
		if _, err := d.RecordBeat(ctx, Beat{Host: "absent", TS: 1, At: t0}); !errors.Is(err, ErrNotFound) {
			t.Errorf("heartbeat of an absent host = %v, want ErrNotFound", err)
		}
		rows, err := d.Heartbeats(ctx, "h", 10)
		if err != nil || len(rows) != 2 || rows[0].Current != "/nix/store/b" || rows[0].Count != 1 || rows[1].Count != 3 {
			t.Fatalf("Heartbeats = %+v, %v", rows, err)
		}

		// Drift: the clock starts once and stays until current matches.
		if err := d.SetDesired(ctx, "h", "/nix/store/c", "pinned", "", "", true, t0); err != nil {
			t.Fatal(err)
		}
		if err := d.SetDesired(ctx, "h", "/nix/store/c", "pinned", "", "", true, t0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if h, _ := d.Host(ctx, "h"); h.DriftSince == nil || !h.DriftSince.Equal(t0) || h.Desired != "/nix/store/c" {
			t.Errorf("drifting host = %+v, want drift since %v", h, t0)
		}
		if err := d.SetDesired(ctx, "h", "/nix/store/b", "pinned", "", "", false, t0); err != nil {
			t.Fatal(err)
		}
		if h, _ := d.Host(ctx, "h"); h.DriftSince != nil {
			t.Errorf("host on its target still drifting since %v", h.DriftSince)
		}

		// Heartbeats racing for one host: each timestamp is accepted or
		// refused as a replay, and every accepted one is counted.
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			accepted int64
		)
		for i := range 16 {
			wg.Go(func() {
				err := beat(int64(100+i), "/nix/store/b")
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					accepted++
				case !errors.Is(err, ErrReplay):
					t.Error(err)
				}
			})
		}
		wg.Wait()
		rows, _ = d.Heartbeats(ctx, "h", 10)
		if accepted == 0 || len(rows) != 2 || rows[0].Count != 1+accepted {
			t.Errorf("%d concurrent heartbeats accepted, newest heartbeat row %+v, want count %d", accepted, rows[0], 1+accepted)
		}
	})
}

// TestFleetHistory: deployments, events and the audit log, newest first.
func TestFleetHistory(t *testing.T) {
	forEachDB(t, func(t *testing.T, d *DB) {
		ctx := t.Context()
		t0 := time.UnixMilli(1_700_000_000_000).UTC()
		for i, status := range []string{"failed", "success"} {
			if err := d.AddDeployment(ctx, &Deployment{Host: "h", Target: "/nix/store/t", Previous: "/nix/store/p", Status: status,
				DurationMS: int64(i), StartedAt: t0, ReportedAt: t0.Add(time.Second)}); err != nil {
				t.Fatal(err)
			}
		}
		deps, err := d.Deployments(ctx, "h", 1)
		if err != nil || len(deps) != 1 || deps[0].Status != "success" || !deps[0].ReportedAt.Equal(t0.Add(time.Second)) {
			t.Errorf("Deployments = %+v, %v", deps, err)
		}
		if err := d.AddHostEvent(ctx, "h", "drift", "off target", t0); err != nil {
			t.Fatal(err)
		}
		if ev, err := d.HostEvents(ctx, "h", 5); err != nil || len(ev) != 1 || ev[0].Kind != "drift" || !ev[0].At.Equal(t0) {
			t.Errorf("HostEvents = %+v, %v", ev, err)
		}
		for _, host := range []string{"a", "b", ""} {
			if err := d.Audit(ctx, &AuditEntry{Actor: "alice", Action: "approve", Host: host, Remote: "192.0.2.1:1", At: t0}); err != nil {
				t.Fatal(err)
			}
		}
		if all, err := d.AuditLog(ctx, "", 10); err != nil || len(all) != 3 {
			t.Errorf("AuditLog of all hosts = %+v, %v", all, err)
		}
		if one, err := d.AuditLog(ctx, "a", 10); err != nil || len(one) != 1 || one[0].Host != "a" {
			t.Errorf("AuditLog of a = %+v, %v", one, err)
		}
	})
}

// TestLatestNixosBuild: the newest successful toplevel of a configuration.
func TestLatestNixosBuild(t *testing.T) {
	forEachDB(t, func(t *testing.T, d *DB) {
		ctx := t.Context()
		now := time.Now()
		if _, _, _, err := d.LatestNixosBuild(ctx, "infra", "web"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("LatestNixosBuild with no builds = %v, want ErrNotFound", err)
		}
		var want int64
		for _, status := range []string{ResultSuccess, ResultFailed} {
			b, _, err := d.CreateBuild(ctx, "infra", "api", "/l")
			if err != nil {
				t.Fatal(err)
			}
			rid, _ := d.StartResult(ctx, b.ID, "web", "nixos", now)
			if err := d.FinishResult(ctx, rid, status, "/nix/store/web.drv", []string{"/nix/store/web-" + status}, "", now); err != nil {
				t.Fatal(err)
			}
			if err := d.FinishBuild(ctx, b.ID, StatusSuccess, "", now); err != nil {
				t.Fatal(err)
			}
			if status == ResultSuccess {
				want = b.ID
			}
		}
		out, drv, id, err := d.LatestNixosBuild(ctx, "infra", "web")
		if err != nil || out != "/nix/store/web-success" || drv != "/nix/store/web.drv" || id != want {
			t.Errorf("LatestNixosBuild = %q, %q, %d, %v; want the successful build %d", out, drv, id, err, want)
		}
	})
}
