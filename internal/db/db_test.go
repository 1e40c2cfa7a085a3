package db

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/testsupport/pgtest"
)

// dialects are the engines every storage test runs against.
var dialects = []Dialect{SQLite, Postgres}

// testDSN returns a new, empty database of the dialect: a file for
// SQLite, a fresh database on the test binary's PostgreSQL server.
func testDSN(t *testing.T, dialect Dialect) string {
	t.Helper()
	if dialect == Postgres {
		return pgtest.NewDatabase(t)
	}
	return filepath.Join(t.TempDir(), "state.db")
}

// forEachDB runs f as a subtest per dialect, each on a new database.
func forEachDB(t *testing.T, f func(t *testing.T, d *DB)) {
	t.Helper()
	for _, dialect := range dialects {
		t.Run(string(dialect), func(t *testing.T) {
			d, err := Open(t.Context(), testDSN(t, dialect))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := d.Close(); err != nil {
					t.Errorf("close database: %v", err)
				}
			})
			if d.Dialect() != dialect {
				t.Fatalf("opened a %s database, want %s", d.Dialect(), dialect)
			}
			f(t, d)
		})
	}
}

func TestMigrateTwice(t *testing.T) {
	for _, dialect := range dialects {
		t.Run(string(dialect), func(t *testing.T) {
			dsn := testDSN(t, dialect)
			for range 2 {
				d, err := Open(context.Background(), dsn)
				if err != nil {
					t.Fatal(err)
				}
				if err := d.Close(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestMigrateConcurrently: processes starting at once against one
// PostgreSQL database (a server and its builders) all open it; the schema
// is made once.
func TestMigrateConcurrently(t *testing.T) {
	dsn := testDSN(t, Postgres)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			d, err := Open(t.Context(), dsn)
			if err != nil {
				t.Error(err)
				return
			}
			if err := d.Close(); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	d, err := Open(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("close database: %v", err)
		}
	})
	var applied, files int
	if err := d.sql.QueryRowContext(t.Context(), `SELECT COUNT(*) FROM schema_migrations`).Scan(&applied); err != nil {
		t.Fatal(err)
	}
	entries, _ := migrations.ReadDir("migrations/postgres")
	files = len(entries)
	if applied != files {
		t.Errorf("%d migrations recorded, want %d", applied, files)
	}
}

// TestMigrationsMatch: every migration exists for both dialects, so a
// schema change cannot reach one engine only.
func TestMigrationsMatch(t *testing.T) {
	names := map[Dialect][]string{}
	for _, dialect := range dialects {
		entries, err := migrations.ReadDir("migrations/" + string(dialect))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			names[dialect] = append(names[dialect], e.Name())
		}
	}
	if !slices.Equal(names[SQLite], names[Postgres]) {
		t.Errorf("migrations differ:\nsqlite:   %v\npostgres: %v", names[SQLite], names[Postgres])
	}
}

// TestOpenPostgresUnreachable: a DSN whose server is not there is a clear
// error, not a hang or a panic.
func TestOpenPostgresUnreachable(t *testing.T) {
	_, err := Open(t.Context(), "postgres://nobody@/x?host="+t.TempDir()+"&connect_timeout=5")
	if err == nil || !strings.Contains(err.Error(), "connect to postgres") {
		t.Fatalf("Open of an absent server: %v, want a connect error", err)
	}
}

func TestBuildLifecycle(t *testing.T) {
	forEachDB(t, func(t *testing.T, d *DB) {
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
		if err := d.SetCommit(ctx, b.ID, "0123456789abcdef", "0123456"); err != nil {
			t.Fatal(err)
		}
		rid, err := d.StartResult(ctx, b.ID, "hello", "package", now)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.FinishResult(ctx, rid, ResultSuccess, "/nix/store/x.drv", []string{"/nix/store/a", "/nix/store/b"}, "", now); err != nil {
			t.Fatal(err)
		}
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
	})
}

func TestInterruptActive(t *testing.T) {
	forEachDB(t, func(t *testing.T, d *DB) {
		ctx := context.Background()
		create := func(repo string) *Build {
			t.Helper()
			b, _, err := d.CreateBuild(ctx, repo, "api", "/l/"+repo)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		running := create("a")
		if err := d.StartBuild(ctx, running.ID, time.Now()); err != nil {
			t.Fatal(err)
		}
		rid, err := d.StartResult(ctx, running.ID, "pkg", "package", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		queued := create("b")
		done := create("c")
		if err := d.FinishBuild(ctx, done.ID, StatusSuccess, "", time.Now()); err != nil {
			t.Fatal(err)
		}

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
	})
}

// TestCreateBuildRace: many concurrent triggers create exactly one build.
func TestCreateBuildRace(t *testing.T) {
	forEachDB(t, func(t *testing.T, d *DB) {
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
	})
}

// TestResultCountsAndLog: a build carries its results counted by outcome,
// in every read, and a result its part of the log and, failed, its tail.
func TestResultCountsAndLog(t *testing.T) {
	forEachDB(t, func(t *testing.T, d *DB) {
		ctx := context.Background()
		b, _, _ := d.CreateBuild(ctx, "r", "api", "/l/r")
		now := time.Now()
		off := func(n int64) *int64 { return &n }
		add := func(attr, status string, start, end int64, tail string) int64 {
			t.Helper()
			rid, err := d.StartResultLog(ctx, b.ID, attr, "package", now, off(start))
			if err != nil {
				t.Fatal(err)
			}
			if status == ResultRunning {
				return rid
			}
			if err := d.FinishResultLog(ctx, rid, status, "/nix/store/"+attr+".drv", nil, "", now, off(end), tail); err != nil {
				t.Fatal(err)
			}
			return rid
		}
		add("a", ResultSuccess, 0, 10, "")
		add("b", ResultSuccess, 10, 20, "")
		bad := add("c", ResultFailed, 20, 35, "c> fails\nerror: builder failed")
		add("d", ResultSkipped, 35, 35, "")
		running := add("e", ResultRunning, 35, 0, "")

		want := ResultCounts{Built: 2, Failed: 1, Skipped: 1}
		got, err := d.Build(ctx, b.ID)
		if err != nil || got.Counts != want {
			t.Errorf("Build counts = %+v (%v), want %+v", got.Counts, err, want)
		}
		if l, err := d.LatestBuild(ctx, "r"); err != nil || l.Counts != want {
			t.Errorf("LatestBuild counts = %+v (%v), want %+v", l.Counts, err, want)
		}
		if list, err := d.ListBuilds(ctx, "r", 5, 0); err != nil || len(list) != 1 || list[0].Counts != want {
			t.Errorf("ListBuilds = %+v (%v), want counts %+v", list, err, want)
		}

		r, err := d.Result(ctx, b.ID, bad)
		if err != nil || r.Attr != "c" || r.LogStart == nil || *r.LogStart != 20 || r.LogEnd == nil || *r.LogEnd != 35 || r.LogTail != "c> fails\nerror: builder failed" {
			t.Fatalf("Result = %+v (%v)", r, err)
		}
		if r, err := d.Result(ctx, b.ID, running); err != nil || r.LogStart == nil || *r.LogStart != 35 || r.LogEnd != nil {
			t.Errorf("running Result = %+v (%v), want log from 35, no end", r, err)
		}
		if _, err := d.Result(ctx, b.ID+1, bad); !errors.Is(err, ErrNotFound) {
			t.Errorf("Result of another build: %v, want ErrNotFound", err)
		}
		// A result recorded without a log position has none.
		rid, _ := d.StartResult(ctx, b.ID, "old", "package", now)
		if r, err := d.Result(ctx, b.ID, rid); err != nil || r.LogStart != nil {
			t.Errorf("Result without a log position = %+v (%v)", r, err)
		}
	})
}

func TestRecordDelivery(t *testing.T) {
	forEachDB(t, func(t *testing.T, d *DB) {
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
	})
}

func TestTokenStorage(t *testing.T) {
	forEachDB(t, func(t *testing.T, d *DB) {
		ctx := context.Background()
		created := time.UnixMilli(1_700_000_000_000).UTC()
		exp := created.Add(time.Hour)
		tok := &APIToken{Name: "ci", LookupID: "0123456789ab", Hash: "ff", Role: "trigger", CreatedBy: "loopback", CreatedAt: created, ExpiresAt: &exp}
		if err := d.CreateToken(ctx, tok); err != nil {
			t.Fatal(err)
		}
		if err := d.CreateToken(ctx, &APIToken{Name: "ci", LookupID: "ba9876543210", Role: "read", CreatedAt: created}); !errors.Is(err, ErrExists) {
			t.Fatalf("second token named ci: %v", err)
		}
		got, err := d.TokenByLookupID(ctx, "0123456789ab")
		if err != nil || got.Name != "ci" || got.Hash != "ff" || !got.CreatedAt.Equal(created) || got.ExpiresAt == nil || !got.ExpiresAt.Equal(exp) || got.LastUsedAt != nil {
			t.Fatalf("TokenByLookupID = %+v, %v", got, err)
		}
		if err := d.TouchToken(ctx, "ci", created.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		list, err := d.Tokens(ctx)
		if err != nil || len(list) != 1 || list[0].LastUsedAt == nil {
			t.Fatalf("Tokens = %+v, %v", list, err)
		}
		if err := d.DeleteToken(ctx, "ci"); err != nil {
			t.Fatal(err)
		}
		if _, err := d.TokenByLookupID(ctx, "0123456789ab"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleted token: %v", err)
		}
		if err := d.DeleteToken(ctx, "ci"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleting twice: %v", err)
		}
	})
}

func TestHostDeleteAndKey(t *testing.T) {
	forEachDB(t, func(t *testing.T, d *DB) {
		ctx := context.Background()
		for _, h := range []*Host{{Name: "h1", PublicKey: "k1", Status: HostPending, Policy: PolicyManual}, {Name: "h2", PublicKey: "k2", Status: HostApproved, Policy: PolicyManual}} {
			if err := d.CreateHost(ctx, h); err != nil {
				t.Fatal(err)
			}
		}
		if n, err := d.CountHosts(ctx, HostPending); err != nil || n != 1 {
			t.Fatalf("CountHosts(pending) = %d, %v", n, err)
		}
		if err := d.SetHostKey(ctx, "h1", "k2"); !errors.Is(err, ErrExists) {
			t.Fatalf("taking h2's key: %v", err)
		}
		if err := d.SetHostKey(ctx, "nobody", "k9"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("key of an unknown host: %v", err)
		}
		if err := d.SetHostKey(ctx, "h1", "k3"); err != nil {
			t.Fatal(err)
		}
		if h, err := d.Host(ctx, "h1"); err != nil || h.PublicKey != "k3" || h.Status != HostApproved {
			t.Fatalf("h1 after SetHostKey = %+v, %v", h, err)
		}
		if err := d.AddHostEvent(ctx, "h1", "enrolled", "x", time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := d.DeleteHost(ctx, "h1"); err != nil {
			t.Fatal(err)
		}
		if ev, err := d.HostEvents(ctx, "h1", 10); err != nil || len(ev) != 0 {
			t.Fatalf("events of a deleted host: %d, %v", len(ev), err)
		}
		if err := d.DeleteHost(ctx, "h1"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleting twice: %v", err)
		}
	})
}
