package api

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/db"
)

// Worker is a build worker as /api/v1/workers shows it.
type Worker struct {
	*db.Worker
	// Alive is false once the worker has not been heard of for three
	// heartbeats.
	Alive bool `json:"alive"`
}

// workerHeartbeat is how often workers heartbeat (a third of their lease).
const workerHeartbeat = 10 * time.Second

func (s *Server) listWorkers(w http.ResponseWriter, r *http.Request) {
	ws, err := s.db.Workers(r.Context())
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	out := make([]Worker, 0, len(ws))
	for _, wk := range ws {
		out = append(out, Worker{Worker: wk, Alive: time.Since(wk.LastSeen) < 3*workerHeartbeat})
	}
	writeJSON(w, http.StatusOK, out)
}

// queueProblems says when build jobs wait and no worker is there to take
// them (a server with --no-local-builder whose builders are all gone).
func (s *Server) queueProblems(ctx context.Context) []string {
	queued, _, err := s.db.QueueCounts(ctx)
	if err != nil {
		return []string{fmt.Sprintf("cannot read the build queue: %v", err)}
	}
	if queued == 0 {
		return nil
	}
	ws, err := s.db.Workers(ctx)
	if err != nil {
		return []string{fmt.Sprintf("cannot read the build workers: %v", err)}
	}
	for _, w := range ws {
		if !w.Draining && time.Since(w.LastSeen) < 3*workerHeartbeat {
			return nil
		}
	}
	return []string{fmt.Sprintf("%d build jobs are queued and no build worker is alive: start `crystal-forge builder --db …` (docs/scaling.md), or the server without --no-local-builder", queued)}
}

// Queue is GET /api/v1/queue.
type Queue struct {
	Queued  int        `json:"queued"`
	Running int        `json:"running"`
	Jobs    []QueueJob `json:"jobs"`
}

// QueueJob is a queued or running job, with how long it has waited or run.
type QueueJob struct {
	*db.Job
	Seconds float64 `json:"seconds"`
}

func (s *Server) queue(w http.ResponseWriter, r *http.Request) {
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			writeError(w, http.StatusBadRequest, "Invalid limit: use 1 to 1000")
			return
		}
		limit = n
	}
	queued, running, err := s.db.QueueCounts(r.Context())
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	jobs, err := s.db.ActiveJobs(r.Context(), limit)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	now := time.Now()
	q := Queue{Queued: queued, Running: running, Jobs: make([]QueueJob, 0, len(jobs))}
	for _, j := range jobs {
		since := j.CreatedAt
		if j.State == db.JobRunning && j.StartedAt != nil {
			since = *j.StartedAt
		}
		q.Jobs = append(q.Jobs, QueueJob{Job: j, Seconds: now.Sub(since).Seconds()})
	}
	writeJSON(w, http.StatusOK, q)
}
