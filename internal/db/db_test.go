package db

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func openTest(t *testing.T) *DB {
	t.Helper()
	d, err := Open(context.Background(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestMigrateTwice(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	for range 2 {
		d, err := Open(context.Background(), path)
		if err != nil {
			t.Fatal(err)
		}
		d.Close()
	}
}

func TestBuildLifecycle(t *testing.T) {
	d := openTest(t)
	ctx := context.Background()
	if _, err := d.LatestBuild(ctx, "r"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("LatestBuild of a new repo: %v", err)
	}
	b, created, err := d.CreateBuild(ctx, "r", "api", "/logs/r")
	if err != nil || !created || b.Status != StatusQueued || b.LogPath != "/logs/r/1.log" {
		t.Fatalf("CreateBuild = %+v, %v, %v", b, created, err)
	}
	again, created, err := d.CreateBuild(ctx, "r", "api", "/logs/r")
	if err != nil || created || again.ID != b.ID {
		t.Fatalf("second CreateBuild while active = %+v, %v, %v", again, created, err)
	}
	now := time.Now()
	if err := d.StartBuild(ctx, b.ID, now); err != nil {
		t.Fatal(err)
	}
	d.SetCommit(ctx, b.ID, "0123456789abcdef", "0123456")
	rid, err := d.StartResult(ctx, b.ID, "hello", "package", now)
	if err != nil {
		t.Fatal(err)
	}
	d.FinishResult(ctx, rid, ResultSuccess, "/nix/store/x.drv", []string{"/nix/store/a", "/nix/store/b"}, "", now)
	if err := d.FinishBuild(ctx, b.ID, StatusSuccess, "", now); err != nil {
		t.Fatal(err)
	}
	got, err := d.Build(ctx, b.ID)
	if err != nil || got.Status != StatusSuccess || got.ShortCommit != "0123456" || got.FinishedAt == nil || got.StartedAt == nil {
		t.Fatalf("Build = %+v, %v", got, err)
	}
	res, err := d.Results(ctx, b.ID)
	if err != nil || len(res) != 1 || len(res[0].OutPaths) != 2 || res[0].Status != ResultSuccess {
		t.Fatalf("Results = %+v, %v", res, err)
	}
	if c, _ := d.LastBuiltCommit(ctx, "r"); c != "0123456789abcdef" {
		t.Errorf("LastBuiltCommit = %q", c)
	}
	next, created, _ := d.CreateBuild(ctx, "r", "poll", "/logs/r")
	if !created || next.ID == b.ID {
		t.Fatal("no new build after the first finished")
	}
	list, err := d.ListBuilds(ctx, "r", 10, 0)
	if err != nil || len(list) != 2 || list[0].ID != next.ID {
		t.Fatalf("ListBuilds = %v, %v", list, err)
	}
	if older, _ := d.ListBuilds(ctx, "r", 10, next.ID); len(older) != 1 || older[0].ID != b.ID {
		t.Errorf("ListBuilds before %d = %v", next.ID, older)
	}
}

func TestInterruptActive(t *testing.T) {
	d := openTest(t)
	ctx := context.Background()
	running, _, _ := d.CreateBuild(ctx, "a", "api", "/l/a")
	d.StartBuild(ctx, running.ID, time.Now())
	rid, _ := d.StartResult(ctx, running.ID, "pkg", "package", time.Now())
	queued, _, _ := d.CreateBuild(ctx, "b", "api", "/l/b")
	done, _, _ := d.CreateBuild(ctx, "c", "api", "/l/c")
	d.FinishBuild(ctx, done.ID, StatusSuccess, "", time.Now())

	got, err := d.InterruptActive(ctx, time.Now())
	if err != nil || len(got) != 2 || got[0].ID != running.ID || got[1].ID != queued.ID {
		t.Fatalf("InterruptActive = %v, %v", got, err)
	}
	for _, id := range []int64{running.ID, queued.ID} {
		b, _ := d.Build(ctx, id)
		if b.Status != StatusFailed || b.Error != "interrupted" || b.FinishedAt == nil {
			t.Errorf("build %d after interrupt: %+v", id, b)
		}
	}
	if b, _ := d.Build(ctx, done.ID); b.Status != StatusSuccess {
		t.Errorf("finished build changed: %+v", b)
	}
	res, _ := d.Results(ctx, running.ID)
	if len(res) != 1 || res[0].ID != rid || res[0].Status != ResultFailed {
		t.Errorf("running result not failed: %+v", res)
	}
}

// TestCreateBuildRace: many concurrent triggers create exactly one build.
func TestCreateBuildRace(t *testing.T) {
	d := openTest(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	createdN := 0
	for range 16 {
		wg.Go(func() {
			_, created, err := d.CreateBuild(context.Background(), "r", "api", "/l")
			if err != nil {
				t.Error(err)
			}
			if created {
				mu.Lock()
				createdN++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if createdN != 1 {
		t.Errorf("%d builds created by concurrent triggers, want 1", createdN)
	}
}

func TestRecordDelivery(t *testing.T) {
	d := openTest(t)
	ctx := context.Background()
	at := time.Unix(1000, 0)
	for _, tc := range []struct {
		provider, id string
		at           time.Time
		fresh        bool
	}{
		{"github", "d1", at, true},
		{"github", "d1", at, false},                        // the same delivery again
		{"gitea", "d1", at, true},                          // ids are per provider
		{"github", "d1", at.Add(8 * 24 * time.Hour), true}, // forgotten after a week
	} {
		fresh, err := d.RecordDelivery(ctx, tc.provider, tc.id, "r", tc.at, 7*24*time.Hour)
		if err != nil || fresh != tc.fresh {
			t.Errorf("RecordDelivery(%s, %s, %v) = %v, %v; want %v", tc.provider, tc.id, tc.at, fresh, err, tc.fresh)
		}
	}
}
