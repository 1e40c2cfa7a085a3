package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// TestIdleConnectionFlood: one client holding many idle keep-alive
// connections (383 once took the server down) gets only its bound; the
// API and the cache keep answering other clients, and the flooding client
// again once it lets go.
func TestIdleConnectionFlood(t *testing.T) {
	testsupport.RequireNix(t)
	const limit = 8
	srv := testsupport.StartServer(t, testsupport.ServerOptions{ExtraTOML: fmt.Sprintf("max_connections_per_client = %d\n", limit)})
	apiAddr := strings.TrimPrefix(srv.URL, "http://")
	cacheAddr := strings.TrimPrefix(srv.CacheURL, "http://")

	dial := func(from, addr string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		return d.DialContext(t.Context(), "tcp", addr)
	}
	// get sends one request on c and reads the answer, leaving c open.
	get := func(c net.Conn, br *bufio.Reader, path string) (int, error) {
		if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n", path); err != nil {
			return 0, err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return 0, err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, err
	}

	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for _, addr := range []string{apiAddr, cacheAddr} {
		path := map[string]string{apiAddr: "/health", cacheAddr: "/nix-cache-info"}[addr]
		served := 0
		for range 100 {
			c, err := dial("127.0.0.1", addr)
			if err != nil {
				t.Fatalf("dial %s: %v", addr, err)
			}
			held = append(held, c)
			if code, err := get(c, bufio.NewReader(c), path); err == nil && code == 200 {
				served++
			}
		}
		if served != limit {
			t.Errorf("%s served %d of 100 connections from one client, want its bound %d", addr, served, limit)
		}
		// Another client is served while they are held.
		c, err := dial("127.0.0.2", addr)
		if err != nil {
			t.Fatal(err)
		}
		if code, err := get(c, bufio.NewReader(c), path); err != nil || code != 200 {
			t.Fatalf("%s for another client while one holds %d connections: %d %v", addr, limit, code, err)
		}
		c.Close()
	}
	for _, c := range held {
		c.Close()
	}
	held = nil
	// The server notices the closes asynchronously: wait for the slot.
	testsupport.WaitUntil(t, "the flooding client to be served again", func() bool {
		c, err := dial("127.0.0.1", apiAddr)
		if err != nil {
			return false
		}
		defer c.Close()
		code, err := get(c, bufio.NewReader(c), "/health")
		return err == nil && code == 200
	})
}
