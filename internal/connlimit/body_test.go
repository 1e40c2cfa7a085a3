package connlimit

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A body that never arrives is cut off at the deadline; one that arrives is
// read, and the handler may then take longer than the deadline.
func TestBodyDeadline(t *testing.T) {
	got := make(chan error, 4)
	srv := httptest.NewServer(BodyDeadline(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		got <- err
		if err != nil {
			http.Error(w, "slow body", http.StatusRequestTimeout)
			return
		}
		// Longer than the body's deadline: a streaming answer still works.
		time.Sleep(300 * time.Millisecond)
		fmt.Fprintf(w, "read %d", len(b))
	}), 100*time.Millisecond))
	defer srv.Close()

	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("handler read of a stalled body: %v, want a timeout", err)
	}

	resp, err := http.Post(srv.URL, "text/plain", strings.NewReader("0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if <-got != nil || string(body) != "read 10" {
		t.Fatalf("complete body: %d %q", resp.StatusCode, body)
	}
	// The connection stays usable for the next request (keep-alive).
	c2, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	br := bufio.NewReader(c2)
	for i := range 2 {
		if _, err := fmt.Fprintf(c2, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d on one connection: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if <-got != nil || string(b) != "read 2" {
			t.Fatalf("request %d: %q", i, b)
		}
	}
}
