package api_test

import (
	"net/http"
	"os"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/api"
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
