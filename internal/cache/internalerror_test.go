package cache_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/cache"
	"github.com/crystal-forge/crystal-forge/internal/nixstore"
	"github.com/crystal-forge/crystal-forge/internal/signing"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// With the store database gone, a narinfo is 500 and /health 503, each
// with a request id and nothing of the error; the log has the error under
// the same id.
func TestInternalErrorHidesCause(t *testing.T) {
	testsupport.RequireNix(t)
	store, err := nixstore.Open(t.Context(), nixstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := newKey(t)
	var logs testsupport.SyncBuffer
	srv, err := cache.New(cache.Config{Keys: []*signing.SecretKey{key}, Store: store, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		path   string
		code   int
		answer *regexp.Regexp
	}{
		{"/" + unknownHash() + ".narinfo", http.StatusInternalServerError, regexp.MustCompile(`^internal error; request id ([0-9a-f]{16})\n$`)},
		{"/health", http.StatusServiceUnavailable, regexp.MustCompile(`^\{"status":"unhealthy","error":"store database unavailable; request id ([0-9a-f]{16})"\}\n$`)},
	} {
		logs.Reset()
		resp, err := hs.Client().Get(hs.URL + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		m := tt.answer.FindStringSubmatch(string(body))
		if resp.StatusCode != tt.code || m == nil {
			t.Fatalf("GET %s with the store database closed = %d %q, want %d %s", tt.path, resp.StatusCode, body, tt.code, tt.answer)
		}
		id := m[1]
		if got := resp.Header.Get("X-Request-Id"); got != id {
			t.Errorf("GET %s: X-Request-Id %q, want %q", tt.path, got, id)
		}
		line := strings.TrimSpace(logs.String())
		if strings.Count(line, "\n") != 0 || !strings.Contains(line, "level=ERROR") || !strings.Contains(line, "request_id="+id) || !strings.Contains(line, "database is closed") {
			t.Errorf("GET %s: log %q, want one error line with request_id=%s and the error", tt.path, line, id)
		}
	}
}
