package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/build"
	"github.com/crystal-forge/crystal-forge/internal/db"
)

// Repository is a repository in /api/v1.
type Repository struct {
	Name        string       `json:"name"`
	URL         string       `json:"url"`
	Branch      string       `json:"branch"`
	Status      build.Status `json:"status"`
	LatestBuild *db.Build    `json:"latest_build"`
}

// Build is a build with its per-attribute results.
type Build struct {
	*db.Build
	Results []*db.Result `json:"results"`
	// Pushes are the pushes of the build's outputs to the configured
	// caches (empty when none is configured or nothing built).
	Pushes []*db.PushJob `json:"pushes"`
}

func (s *Server) repositoryView(r *http.Request, name string) (*Repository, error) {
	repo, _ := s.orch.Repository(name)
	v := &Repository{Name: name, URL: repo.URL, Branch: repo.Branch}
	b, err := s.db.LatestBuild(r.Context(), name)
	if err != nil && !errors.Is(err, db.ErrNotFound) {
		return nil, err
	}
	if err == nil {
		v.LatestBuild = b
	}
	v.Status = build.SpecStatus(name, v.LatestBuild)
	return v, nil
}

func (s *Server) listRepositories(w http.ResponseWriter, r *http.Request) {
	out := []*Repository{}
	for _, name := range s.orch.Repositories() {
		v, err := s.repositoryView(r, name)
		if err != nil {
			s.internalError(w, r, err)
			return
		}
		out = append(out, v)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getRepository(w http.ResponseWriter, r *http.Request) {
	name := s.repository(w, r)
	if name == "" {
		return
	}
	v, err := s.repositoryView(r, name)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// listBuilds is GET /api/v1/repositories/{repository}/builds?limit=N&before=ID.
func (s *Server) listBuilds(w http.ResponseWriter, r *http.Request) {
	name := s.repository(w, r)
	if name == "" {
		return
	}
	limit, ok := intParam(r, "limit", 20, 1, 500)
	if !ok {
		writeError(w, http.StatusBadRequest, "limit must be an integer from 1 to 500")
		return
	}
	before, ok := intParam(r, "before", 0, 0, 1<<62)
	if !ok {
		writeError(w, http.StatusBadRequest, "before must be a build id")
		return
	}
	builds, err := s.db.ListBuilds(r.Context(), name, limit, int64(before))
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, builds)
}

func (s *Server) triggerBuild(w http.ResponseWriter, r *http.Request) {
	name := s.repository(w, r)
	if name == "" {
		return
	}
	var opts build.TriggerOptions
	switch r.URL.Query().Get("force") {
	case "", "0", "false":
	case "1", "true":
		opts.Force = true
	default:
		writeError(w, http.StatusBadRequest, "Invalid force: use force=1 to build again derivations that failed before")
		return
	}
	b, created, err := s.orch.TriggerWith(r.Context(), name, "api", opts)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	code := http.StatusCreated
	if !created {
		code = http.StatusConflict
	} else {
		s.log.Info("build triggered", "repository", name, "build", b.ID, "remote", r.RemoteAddr, who(r))
	}
	writeJSON(w, code, b)
}

// buildParam resolves {id}: 400 when malformed, 404 when unknown.
func (s *Server) buildParam(w http.ResponseWriter, r *http.Request) *db.Build {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		writeError(w, http.StatusBadRequest, "Invalid build id")
		return nil
	}
	b, err := s.db.Build(r.Context(), id)
	if errors.Is(err, db.ErrNotFound) {
		writeError(w, http.StatusNotFound, "Build not found")
		return nil
	}
	if err != nil {
		s.internalError(w, r, err)
		return nil
	}
	return b
}

func (s *Server) getBuild(w http.ResponseWriter, r *http.Request) {
	b := s.buildParam(w, r)
	if b == nil {
		return
	}
	res, err := s.db.Results(r.Context(), b.ID)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	pushes, err := s.db.Pushes(r.Context(), b.ID)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, Build{Build: b, Results: res, Pushes: pushes})
}

// resultLog is GET /api/v1/builds/{id}/results/{result}/log: the part of
// the build's log that one attribute wrote, as text (so far, while it
// builds).
func (s *Server) resultLog(w http.ResponseWriter, r *http.Request) {
	b := s.buildParam(w, r)
	if b == nil {
		return
	}
	rid, err := strconv.ParseInt(r.PathValue("result"), 10, 64)
	if err != nil || rid <= 0 {
		writeError(w, http.StatusBadRequest, "Invalid result id")
		return
	}
	res, err := s.db.Result(r.Context(), b.ID, rid)
	if errors.Is(err, db.ErrNotFound) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("Build %d has no result %d: see GET /api/v1/builds/%d for its results", b.ID, rid, b.ID))
		return
	}
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	if res.LogStart == nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("No log was recorded for %s in build %d: read the whole log at /api/v1/builds/%d/log", res.Attr, b.ID, b.ID))
		return
	}
	// Buffer it: an error half-way could not change the status any more.
	var buf bytes.Buffer
	if _, err := s.orch.ResultLog(r.Context(), b, res, &buf); err != nil {
		s.internalError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write(buf.Bytes())
}

func (s *Server) cancelBuild(w http.ResponseWriter, r *http.Request) {
	b := s.buildParam(w, r)
	if b == nil {
		return
	}
	if err := s.orch.Cancel(b.ID); errors.Is(err, build.ErrNotActive) {
		writeError(w, http.StatusConflict, "Build is not running")
		return
	} else if err != nil {
		s.internalError(w, r, err)
		return
	}
	s.log.Info("build cancel requested", "build", b.ID, "remote", r.RemoteAddr, who(r))
	writeJSON(w, http.StatusAccepted, map[string]any{"status": "cancelling", "build_id": b.ID})
}

// buildLog is GET /api/v1/builds/{id}/log: the whole log as text, streamed
// from the file; with ?follow=1 or Accept: text/event-stream, Server-Sent
// Events, one "line" event per log line and "end" when the build is over.
func (s *Server) buildLog(w http.ResponseWriter, r *http.Request) {
	b := s.buildParam(w, r)
	if b == nil {
		return
	}
	follow := r.URL.Query().Get("follow") == "1" || r.Header.Get("Accept") == "text/event-stream"
	if !follow {
		f, err := os.Open(b.LogPath)
		if errors.Is(err, fs.ErrNotExist) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			return
		}
		if err != nil {
			s.internalError(w, r, err)
			return
		}
		defer f.Close()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if _, err := io.Copy(w, f); err != nil && r.Context().Err() == nil {
			// The answer has begun: too late for a 500.
			s.log.Warn("send build log", "build", b.ID, "err", err)
		}
		return
	}
	sse := newSSE(w)
	if sse == nil {
		s.internalError(w, r, errors.New("streaming unsupported"))
		return
	}
	ctx, cancel := s.streamContext(r)
	defer cancel()
	var partial []byte
	err := s.orch.Follow(ctx, b, 0, func(p []byte) error {
		partial = append(partial, p...)
		for {
			i := bytes.IndexByte(partial, '\n')
			if i < 0 {
				break
			}
			if err := sse.send("line", partial[:i]); err != nil {
				return err
			}
			partial = partial[i+1:]
		}
		return sse.flush()
	})
	if err != nil {
		return
	}
	// The stream ends here either way; a failed write means the client
	// has gone, and there is no one left to tell.
	if len(partial) > 0 {
		_ = sse.send("line", partial)
	}
	final, err := s.db.Build(r.Context(), b.ID)
	if err != nil {
		// Without the end event the client sees the stream close early.
		s.log.Error("read build for the log's end event", "build", b.ID, "err", err)
	} else {
		_ = sse.send("end", []byte(final.Status))
	}
	_ = sse.flush()
}

// events is GET /api/v1/events: a "build" event whenever a build is
// queued, starts, records a result or ends; the page refetches on each.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	sse := newSSE(w)
	if sse == nil {
		s.internalError(w, r, errors.New("streaming unsupported"))
		return
	}
	ctx, cancel := s.streamContext(r)
	defer cancel()
	ch, stop := s.orch.Subscribe()
	defer stop()
	sse.comment("connected")
	if sse.flush() != nil {
		return
	}
	keepalive := time.NewTicker(25 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-ch:
			if err := sse.sendJSON("build", e); err != nil {
				return
			}
		case <-keepalive.C:
			sse.comment("keepalive")
		}
		if sse.flush() != nil {
			return
		}
	}
}

// sse writes a text/event-stream.
type sse struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func newSSE(w http.ResponseWriter) *sse {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	return &sse{w: w, rc: http.NewResponseController(w)}
}

func (s *sse) send(event string, data []byte) error {
	// A data line cannot hold a newline or carriage return; log lines
	// already had their newline cut, a stray \r is dropped.
	data = bytes.ReplaceAll(data, []byte{'\r'}, nil)
	_, err := fmt.Fprintf(s.w, "event: %s\ndata: %s\n\n", event, data)
	return err
}

func (s *sse) sendJSON(event string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.send(event, b)
}

func (s *sse) comment(c string) { fmt.Fprintf(s.w, ": %s\n\n", c) }

func (s *sse) flush() error { return s.rc.Flush() }
