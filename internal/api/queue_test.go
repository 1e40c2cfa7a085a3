package api_test

import (
	"fmt"
	"net/http"
	"os"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/api"
	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	ts "github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// TestWorkersAndQueue: /api/v1/workers shows the server's in-process
// worker, /api/v1/queue the job it runs, where and for how long.
func TestWorkersAndQueue(t *testing.T) {
	t.Parallel()
	s, blocker, id, _ := startBlocked(t)
	host, _ := os.Hostname()
	var ws []api.Worker
	s.JSON(t, "GET", "/api/v1/workers", http.StatusOK, &ws)
	if len(ws) != 1 || ws[0].Name != "local@"+host || ws[0].Host != host || !ws[0].Alive || ws[0].Capacity != 1 || len(ws[0].Systems) != 1 {
		t.Fatalf("workers = %+v, want the in-process worker", ws)
	}
	var q api.Queue
	s.JSON(t, "GET", "/api/v1/queue", http.StatusOK, &q)
	if q.Running != 1 || q.Queued != 0 || len(q.Jobs) != 1 {
		t.Fatalf("queue = %+v, want block running", q)
	}
	j := q.Jobs[0]
	if j.BuildID != id || j.Kind != db.JobAttr || j.Attr != "block" || j.State != db.JobRunning || j.Worker != ws[0].Name || j.Seconds < 0 || j.StartedAt == nil {
		t.Errorf("queued job = %+v", j)
	}
	for _, bad := range []string{"0", "1001", "x"} {
		if code, body := s.Do(t, "GET", "/api/v1/queue?limit="+bad, nil, nil); code != http.StatusBadRequest {
			t.Errorf("limit=%s = %d %s, want 400", bad, code, body)
		}
	}
	blocker.Release(t)
	ts.WaitBuildSucceeded(t, s, id)
	s.JSON(t, "GET", "/api/v1/queue", http.StatusOK, &q)
	if q.Running != 0 || q.Queued != 0 || len(q.Jobs) != 0 {
		t.Errorf("queue after the build = %+v, want empty", q)
	}
}

// TestHealthWithoutWorkers: jobs queued with no worker alive make /health
// degraded, saying what to start; cancelling the build clears it.
func TestHealthWithoutWorkers(t *testing.T) {
	t.Parallel()
	src := flakeRepo(t, ts.Nonce(), ts.GoodPackage("hello", 0))
	s := ts.StartBuildServer(t, ts.BuildServerConfig{Repositories: []config.Repository{ts.MainBranchRepo("app", src)}, NoLocalBuilder: true})
	var h struct {
		Status   string   `json:"status"`
		Problems []string `json:"problems"`
	}
	s.JSON(t, "GET", "/health", http.StatusOK, &h)
	if h.Status != "healthy" || len(h.Problems) != 0 {
		t.Errorf("health of an idle server without workers = %+v, want healthy", h)
	}
	id := s.Trigger(t, "app")
	ts.WaitUntil(t, "the evaluation job to be queued", func() bool {
		q, _, err := s.DB.QueueCounts(t.Context())
		return err == nil && q == 1
	})
	s.JSON(t, "GET", "/health", http.StatusOK, &h)
	want := "1 build jobs are queued and no build worker is alive: start `crystal-forge builder --db …` (docs/scaling.md), or the server without --no-local-builder"
	if h.Status != "degraded" || len(h.Problems) != 1 || h.Problems[0] != want {
		t.Errorf("health with a job and no worker = %+v, want degraded: %q", h, want)
	}
	if b := s.Build(t, id); b.Status != db.StatusRunning {
		t.Errorf("build without workers = %s, want running (its evaluation queued)", b.Status)
	}
	s.JSON(t, "POST", fmt.Sprintf("/api/v1/builds/%d/cancel", id), http.StatusAccepted, nil)
	ts.WaitBuildEnded(t, s, id, db.StatusCancelled)
	s.JSON(t, "GET", "/health", http.StatusOK, &h)
	if h.Status != "healthy" {
		t.Errorf("health after the cancel = %+v, want healthy", h)
	}
}
