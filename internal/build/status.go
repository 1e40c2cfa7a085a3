package build

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/db"
)

// Status is the spec's BuildStatus document, as /build/status returns it
// and as ${DATA_DIR}/status/<repo>.json holds it.
type Status struct {
	IsRunning  bool    `json:"is_running"`
	LastStart  *string `json:"last_start"`
	LastFinish *string `json:"last_finish"`
	LastStatus *string `json:"last_status"`
	LastCommit *string `json:"last_commit"`
	Repository string  `json:"repository"`
}

func isoTime(t *time.Time) *string {
	if t == nil {
		return nil
	}
	s := t.UTC().Format(time.RFC3339)
	return &s
}

func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// SpecStatus maps a repository's newest build onto the spec's state
// machine: while running, last_finish/last_status/last_commit are null;
// afterwards last_status is "success" or "failed" (cancelled and
// interrupted builds are failed).
func SpecStatus(repo string, b *db.Build) Status {
	s := Status{Repository: repo}
	if b == nil {
		return s
	}
	// A build that never left the queue (cancelled or interrupted there)
	// has no start: it reports its creation, before and after it ends.
	s.LastStart = isoTime(b.StartedAt)
	if s.LastStart == nil {
		s.LastStart = isoTime(&b.CreatedAt)
	}
	if b.Active() {
		s.IsRunning = true
		return s
	}
	s.LastFinish = isoTime(b.FinishedAt)
	st := db.StatusFailed
	if b.Status == db.StatusSuccess {
		st = db.StatusSuccess
	}
	s.LastStatus = &st
	s.LastCommit = strPtr(b.ShortCommit)
	return s
}

// Status returns the spec status of repo, from memory between transitions.
func (o *Orchestrator) Status(ctx context.Context, repo string) (Status, error) {
	if _, ok := o.repos[repo]; !ok {
		return Status{}, ErrUnknownRepository
	}
	o.statusMu.Lock()
	st, ok := o.statuses[repo]
	gen := o.statusGen[repo]
	o.statusMu.Unlock()
	if ok {
		return st, nil
	}
	st, err := o.loadStatus(ctx, repo)
	if err != nil {
		return Status{}, err
	}
	o.statusMu.Lock()
	if o.statusGen[repo] == gen {
		o.statuses[repo] = st
	}
	o.statusMu.Unlock()
	return st, nil
}

// loadStatus reads repo's spec status from the database.
func (o *Orchestrator) loadStatus(ctx context.Context, repo string) (Status, error) {
	b, err := o.db.LatestBuild(ctx, repo)
	switch {
	case errors.Is(err, db.ErrNotFound):
		return SpecStatus(repo, nil), nil
	case err != nil:
		return Status{}, err
	}
	return SpecStatus(repo, b), nil
}

// writeStatusFile mirrors the status into ${DATA_DIR}/status/<repo>.json
// (temp file + rename, as the spec asks), for tools that read it, and
// retries every file an earlier write failed to update (a read-only or
// full disk), so none stays stale once the disk is fixed. Until then
// Problems reports them. It reads the database, never the in-memory copy,
// which may not be dropped yet.
func (o *Orchestrator) writeStatusFile(ctx context.Context, repo string) {
	// One writer at a time: two writers of one file could otherwise land
	// an older status after a newer one.
	o.fileMu.Lock()
	defer o.fileMu.Unlock()
	repos := []string{repo}
	for r := range o.fileErrs {
		if r != repo {
			repos = append(repos, r)
		}
	}
	for _, r := range repos {
		err := o.writeOneStatusFile(ctx, r)
		if err == nil {
			if _, was := o.fileErrs[r]; was {
				o.log.Info("status file written again", "repository", r)
			}
			delete(o.fileErrs, r)
			continue
		}
		o.log.Error("status file not updated; retried at the next build transition and at start", "repository", r, "err", err)
		o.fileErrs[r] = err
	}
}

func (o *Orchestrator) writeOneStatusFile(ctx context.Context, repo string) error {
	s, err := o.loadStatus(ctx, repo)
	if err != nil {
		return fmt.Errorf("read status: %w", err)
	}
	dir := filepath.Join(o.cfg.DataDir, "status")
	// Recreate the directory, in case it was removed or replaced.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create status directory: %w", err)
	}
	return writeJSONAtomic(filepath.Join(dir, repo+".json"), s)
}

// Problems returns what keeps the orchestrator from doing all its work,
// one sentence each, for /health; none when all is well.
func (o *Orchestrator) Problems() []string {
	o.fileMu.Lock()
	defer o.fileMu.Unlock()
	var out []string
	for repo, err := range o.fileErrs {
		out = append(out, fmt.Sprintf("status/%s.json is stale: %v (fix the disk; it is rewritten at the next build transition or restart)", repo, err))
	}
	sort.Strings(out)
	return out
}

func writeJSONAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".status-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// After the rename there is nothing left to remove: the error is expected.
	defer func() { _ = os.Remove(tmp.Name()) }()
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
