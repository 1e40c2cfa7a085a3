package api_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	ts "github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// A storage failure answers 500 with a request id and nothing of the
// error; the log has the whole error under the same id.
func TestInternalErrorHidesCause(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	database, err := db.Open(t.Context(), filepath.Join(dataDir, "crystal-forge.db"))
	if err != nil {
		t.Fatal(err)
	}
	var logs ts.SyncBuffer
	src := ts.NewGitRepo(t, map[string]string{"README": "not built in this test\n"})
	s := ts.StartBuildServer(t, ts.BuildServerConfig{
		Repositories: []config.Repository{ts.MainBranchRepo("app", src)},
		DataDir:      dataDir,
		DB:           database,
		Logger:       slog.New(slog.NewTextHandler(&logs, nil)),
	})
	// Every query fails from now on: "sql: database is closed".
	if err := database.Close(); err != nil {
		t.Fatal(err)
	}

	answer := regexp.MustCompile(`^internal error; request id ([0-9a-f]{16})$`)
	seen := map[string]bool{}
	for _, path := range []string{"/build/status/app", "/api/v1/repositories", "/api/v1/builds/1"} {
		resp, err := s.HTTP.Client().Get(s.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusInternalServerError {
			t.Fatalf("GET %s with the database closed = %d %s, want 500", path, resp.StatusCode, body)
		}
		var e map[string]string
		if err := json.Unmarshal(body, &e); err != nil || len(e) != 1 {
			t.Fatalf("GET %s: body %s is not {\"detail\": ...} (%v)", path, body, err)
		}
		m := answer.FindStringSubmatch(e["detail"])
		if m == nil {
			t.Fatalf("GET %s: detail %q, want \"internal error; request id <16 hex>\"", path, e["detail"])
		}
		id := m[1]
		if seen[id] {
			t.Errorf("GET %s: request id %s used twice", path, id)
		}
		seen[id] = true
		if got := resp.Header.Get("X-Request-Id"); got != id {
			t.Errorf("GET %s: X-Request-Id %q, want %q", path, got, id)
		}
		if bytes.Contains(body, []byte("sql")) || bytes.Contains(body, []byte("closed")) || bytes.Contains(body, []byte(dataDir)) {
			t.Errorf("GET %s: the answer shows the internal error: %s", path, body)
		}
		var line string
		for l := range strings.SplitSeq(logs.String(), "\n") {
			if strings.Contains(l, "request_id="+id) {
				line = l
			}
		}
		if line == "" {
			t.Fatalf("GET %s: no log line with request_id=%s in:\n%s", path, id, logs.String())
		}
		for _, want := range []string{"level=ERROR", "method=GET", "path=" + path, "database is closed"} {
			if !strings.Contains(line, want) {
				t.Errorf("GET %s: log line %q lacks %q", path, line, want)
			}
		}
	}
}
