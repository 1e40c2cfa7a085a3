package api

import (
	"errors"
	"net/http"

	"github.com/crystal-forge/crystal-forge/internal/build"
)

func (s *Server) info(w http.ResponseWriter, r *http.Request) {
	i := s.cfg.Info
	writeJSON(w, http.StatusOK, map[string]any{
		"hostname":     i.Hostname,
		"api_port":     i.APIPort,
		"cache_port":   i.CachePort,
		"cache_url":    i.cacheURL(),
		"public_key":   i.PublicKey,
		"repositories": s.repoNames(),
	})
}

func (s *Server) repoNames() []string {
	names := s.orch.Repositories()
	if names == nil {
		return []string{}
	}
	return names
}

// health is the spec's document; when the server cannot do all its work
// (a status file it cannot write, build jobs queued and no worker to run
// them) status is "degraded" and problems says why, still with 200: the server serves, and a probe that restarts it on
// failure would not fix a disk.
func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	doc := map[string]any{
		"status":        "healthy",
		"cache_running": s.cfg.CacheRunning(),
		"repositories":  s.repoNames(),
	}
	problems := append(s.orch.Problems(), s.queueProblems(r.Context())...)
	if len(problems) > 0 {
		doc["status"] = "degraded"
		doc["problems"] = problems
	}
	writeJSON(w, http.StatusOK, doc)
}

// specTrigger is POST /build/trigger/{repository}: 200 with "triggered" or
// "already_running", 404 for an unknown repository.
func (s *Server) specTrigger(w http.ResponseWriter, r *http.Request) {
	repo := s.repository(w, r)
	if repo == "" {
		return
	}
	b, created, err := s.orch.Trigger(r.Context(), repo, "api")
	if errors.Is(err, build.ErrUnknownRepository) {
		writeError(w, http.StatusNotFound, "Repository not found")
		return
	}
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	if !created {
		writeJSON(w, http.StatusOK, map[string]any{"status": "already_running", "repository": repo, "build_id": b.ID})
		return
	}
	s.log.Info("build triggered", "repository", repo, "build", b.ID, "remote", r.RemoteAddr, who(r))
	writeJSON(w, http.StatusOK, map[string]any{"status": "triggered", "repository": repo, "build_id": b.ID})
}

func (s *Server) specStatus(w http.ResponseWriter, r *http.Request) {
	repo := s.repository(w, r)
	if repo == "" {
		return
	}
	st, err := s.orch.Status(r.Context(), repo)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// specLogs is GET /build/logs/{repository}?lines=N (default 100, 1–10000).
func (s *Server) specLogs(w http.ResponseWriter, r *http.Request) {
	repo := s.repository(w, r)
	if repo == "" {
		return
	}
	n, ok := intParam(r, "lines", 100, 1, 10000)
	if !ok {
		writeError(w, http.StatusBadRequest, "lines must be an integer from 1 to 10000")
		return
	}
	lines, err := s.orch.TailLines(repo, n)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"logs": lines})
}
