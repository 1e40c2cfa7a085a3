package http1

import (
	"bytes"
	"net/http"
	"testing"
)

// TestEarlyAnswerToLargeBody pins the refused-upload case: a handler that
// answers before reading a body too large to drain closes the connection,
// and that close must not reset it before the client has read the answer
// (the client sees "connection reset by peer" instead of 401).
func TestEarlyAnswerToLargeBody(t *testing.T) {
	ts := startServer(t, handlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no token", http.StatusUnauthorized)
	}))
	client := newClient(t)
	body := bytes.Repeat([]byte("x"), 128*maxDrain) // 32 MiB: more than the sockets buffer
	// A reset is a race between the client's writes and the server's
	// close; many tries make it show where lingering is missing.
	for i := range 20 {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, ts.url()+"/upload", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("try %d: %v", i, err)
		}
		if err := resp.Body.Close(); err != nil {
			t.Fatalf("try %d: close body: %v", i, err)
		}
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("try %d: status %d, want 401", i, resp.StatusCode)
		}
	}
}
