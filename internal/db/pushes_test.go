package db

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

func TestPushJobs(t *testing.T) {
	forEachDB(t, func(t *testing.T, d *DB) {
		ctx := context.Background()
		now := time.Now()
		b, _, err := d.CreateBuild(ctx, "r", "api", "/logs/r")
		if err != nil {
			t.Fatal(err)
		}
		rid, _ := d.StartResult(ctx, b.ID, "web", "nixos", now)
		if err := d.FinishResult(ctx, rid, ResultSuccess, "/nix/store/x.drv", []string{"/nix/store/aaaa-web"}, "", now); err != nil {
			t.Fatal(err)
		}
		if err := d.FinishBuild(ctx, b.ID, StatusSuccess, "", now); err != nil {
			t.Fatal(err)
		}
		p, err := d.CreatePush(ctx, b.ID, "central", "http://c:5000", []string{"/nix/store/aaaa-web"}, now)
		if err != nil || p.State != PushQueued || len(p.Roots) != 1 {
			t.Fatalf("CreatePush = %+v, %v", p, err)
		}
		if _, _, _, err := d.LatestPushedNixosBuild(ctx, "r", "web", "central"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("LatestPushedNixosBuild before the push succeeded: %v", err)
		}
		if active, err := d.ActivePushes(ctx); err != nil || len(active) != 1 {
			t.Fatalf("ActivePushes = %v, %v", active, err)
		}
		if err := d.StartPush(ctx, p.ID, now); err != nil {
			t.Fatal(err)
		}
		prog := PushProgress{Attempts: 2, Paths: 5, Uploaded: 3, Bytes: 1234, Duration: 1500 * time.Millisecond}
		if err := d.UpdatePush(ctx, p.ID, PushSucceeded, prog, now); err != nil {
			t.Fatal(err)
		}
		got, err := d.Push(ctx, p.ID)
		if err != nil || got.State != PushSucceeded || got.Attempts != 2 || got.Paths != 5 || got.Uploaded != 3 || got.Bytes != 1234 ||
			got.DurationMS != 1500 || got.FinishedAt == nil || got.StartedAt == nil {
			t.Fatalf("Push = %+v, %v", got, err)
		}
		out, _, id, err := d.LatestPushedNixosBuild(ctx, "r", "web", "central")
		if err != nil || out != "/nix/store/aaaa-web" || id != b.ID {
			t.Fatalf("LatestPushedNixosBuild = %q, %d, %v", out, id, err)
		}
		if _, _, _, err := d.LatestPushedNixosBuild(ctx, "r", "web", "other"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("LatestPushedNixosBuild to another destination: %v", err)
		}
		if active, _ := d.ActivePushes(ctx); len(active) != 0 {
			t.Fatalf("ActivePushes after the end = %v", active)
		}
		list, err := d.Pushes(ctx, b.ID)
		if err != nil || len(list) != 1 || list[0].ID != p.ID {
			t.Fatalf("Pushes = %v, %v", list, err)
		}
		if states, err := d.PushStates(ctx, b.ID, "central"); err != nil || len(states) != 1 || states[0] != PushSucceeded {
			t.Fatalf("PushStates = %v, %v", states, err)
		}
		if _, err := d.Push(ctx, 999); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Push(999) = %v", err)
		}
	})
}

func TestCacheRoots(t *testing.T) {
	forEachDB(t, func(t *testing.T, d *DB) {
		ctx := context.Background()
		now := time.Now()
		result := func(repo, attr, status string, outs ...string) {
			t.Helper()
			b, _, err := d.CreateBuild(ctx, repo, "api", "/logs")
			if err != nil {
				t.Fatal(err)
			}
			rid, _ := d.StartResult(ctx, b.ID, attr, "package", now)
			if err := d.FinishResult(ctx, rid, status, "", outs, "", now); err != nil {
				t.Fatal(err)
			}
			if err := d.FinishBuild(ctx, b.ID, StatusSuccess, "", now); err != nil {
				t.Fatal(err)
			}
		}
		result("r", "hello", ResultSuccess, "/nix/store/old-hello")
		result("r", "hello", ResultSuccess, "/nix/store/new-hello", "/nix/store/new-hello-doc")
		result("r", "hello", ResultFailed)
		result("r", "other", ResultSuccess, "/nix/store/other")
		result("s", "hello", ResultSuccess, "/nix/store/s-hello")
		if err := d.CreateHost(ctx, &Host{Name: "h", PublicKey: "h:AAAA", Status: HostApproved, Policy: PolicyPinned, Target: "/nix/store/pinned"}); err != nil {
			t.Fatal(err)
		}
		roots, err := d.CacheRoots(ctx)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(roots)
		want := []string{"/nix/store/new-hello", "/nix/store/new-hello-doc", "/nix/store/other", "/nix/store/pinned", "/nix/store/s-hello"}
		if !slices.Equal(roots, want) {
			t.Errorf("CacheRoots = %v, want %v", roots, want)
		}
	})
}
