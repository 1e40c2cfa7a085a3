package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// closedURL is the URL of a port nothing listens on.
func closedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// TestCLIServerDown: every client command, when the server does not
// answer, says where it looked and how to point it elsewhere.
func TestCLIServerDown(t *testing.T) {
	down := closedURL(t)
	t.Setenv("CRYSTAL_FORGE_SERVER", down)
	for _, args := range [][]string{
		{"trigger", "repo"},
		{"trigger", "-f", "repo"},
		{"status"},
		{"logs", "repo"},
		{"logs", "-f", "repo"},
		{"hosts"},
		{"host", "show", "chesty"},
		{"host", "approve", "chesty"},
		{"host", "add", "chesty", "--key", "agent-chesty:AAAA"},
		{"host", "set-target", "chesty", "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x"},
		{"host", "set-policy", "chesty", "manual"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			code, _, stderr := cli(t, args...)
			if code != 1 {
				t.Errorf("exit code %d, want 1\nstderr:\n%s", code, stderr)
			}
			for _, want := range []string{"cannot reach the server at " + down, "--server URL", "CRYSTAL_FORGE_SERVER"} {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr does not contain %q:\n%s", want, stderr)
				}
			}
		})
	}
	// An answer, even an error, is not "cannot reach".
	hs := httptest.NewServer(http.NotFoundHandler())
	defer hs.Close()
	code, _, stderr := cli(t, "status", "--server", hs.URL)
	if code != 1 || !strings.Contains(stderr, "404") || strings.Contains(stderr, "CRYSTAL_FORGE_SERVER") {
		t.Errorf("status against a 404 server: exit %d, stderr:\n%s", code, stderr)
	}
}

// TestPinnedNeedsTarget: `host set-policy NAME pinned` and `host add
// --policy pinned` without --target are refused before anything is sent.
func TestPinnedNeedsTarget(t *testing.T) {
	var requests atomic.Int32
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		http.Error(w, `{"detail":"should not be asked"}`, http.StatusTeapot)
	}))
	defer hs.Close()
	for _, args := range [][]string{
		{"host", "set-policy", "--server", hs.URL, "chesty", "pinned"},
		{"host", "add", "--server", hs.URL, "chesty", "--key", "agent-chesty:AAAA", "--policy", "pinned"},
	} {
		code, _, stderr := cli(t, args...)
		if code != 2 || !strings.Contains(stderr, "a pinned host needs a target: add --target STOREPATH") {
			t.Errorf("%q: exit %d, stderr:\n%s\nwant 2 and that a pinned host needs --target", args, code, stderr)
		}
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("the server received %d requests", n)
	}
}
