package http1

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// testServer is a Server running on a loopback listener.
type testServer struct {
	*Server
	addr      string
	serveDone chan struct{} // closed when Serve has returned
	serveErr  error         // what Serve returned; read after serveDone
}

// startServer serves s on 127.0.0.1 until the test ends. Cleanup shuts it
// down gracefully, which fails the test if a handler is still blocked.
func startServer(t testing.TB, s *Server) *testServer {
	t.Helper()
	if s.Logger == nil {
		// Most tests provoke errors on purpose; the log is not the point.
		s.Logger = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{Server: s, addr: ln.Addr().String(), serveDone: make(chan struct{})}
	go func() {
		ts.serveErr = s.Serve(ln)
		close(ts.serveDone)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("Close after Shutdown: %v", err)
		}
		if err := ts.waitServe(t); !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return ts
}

func (ts *testServer) url() string { return "http://" + ts.addr }

// waitServe waits for Serve to return and returns its error.
func (ts *testServer) waitServe(t testing.TB) error {
	t.Helper()
	select {
	case <-ts.serveDone:
		return ts.serveErr
	case <-time.After(10 * time.Second):
		t.Error("Serve did not return")
		return nil
	}
}

// handlerFunc builds a Server for a handler function.
func handlerFunc(f func(http.ResponseWriter, *http.Request)) *Server {
	return &Server{Handler: http.HandlerFunc(f)}
}

// newClient returns a net/http client whose idle connections are closed
// before the server shuts down.
func newClient(t testing.TB) *http.Client {
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// rawConn is a client connection driven byte by byte.
type rawConn struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
}

func dialRaw(t testing.TB, addr string) *rawConn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	// A server that never answers fails the test instead of hanging it.
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { nc.Close() })
	return &rawConn{t: t, nc: nc, br: bufio.NewReader(nc)}
}

func (c *rawConn) write(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.nc, s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// read reads the response to a request with the given method, body and all.
func (c *rawConn) read(method string) (*http.Response, string) {
	c.t.Helper()
	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		c.t.Fatalf("read response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("read body (status %d): %v", resp.StatusCode, err)
	}
	return resp, string(body)
}

// roundTrip sends one request and reads its response.
func (c *rawConn) roundTrip(method, req string) (*http.Response, string) {
	c.t.Helper()
	c.write(req)
	return c.read(method)
}

// expectClosed checks that the server closes the connection without sending
// anything more.
func (c *rawConn) expectClosed() {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(c.br)
	if len(rest) > 0 {
		c.t.Errorf("got %q, want the connection closed", rest)
	}
	// A reset is a close too: a server giving up on a request may close
	// with input unread, which makes the kernel send RST.
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		c.t.Errorf("connection not closed: %v", err)
	}
}

func get(path string) string {
	return "GET " + path + " HTTP/1.1\r\nHost: test\r\n\r\n"
}

// pattern returns n recognisable bytes: a shifted or truncated body differs.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a' + byte(i%23)
	}
	return b
}

// writeInPieces writes b in pieces of at most size bytes.
func writeInPieces(w io.Writer, b []byte, size int) {
	for len(b) > 0 {
		n := min(size, len(b))
		if _, err := w.Write(b[:n]); err != nil {
			return // the client sees a short body, which the test reports
		}
		b = b[n:]
	}
}

func recv[T any](t testing.TB, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting on a channel")
		panic("unreachable")
	}
}

func TestBasicGET(t *testing.T) {
	ts := startServer(t, handlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/x-nix-narinfo")
		w.Header().Set("X-Custom", "yes")
		w.Header().Set("Content-Length", "12")
		io.WriteString(w, "hello, world")
	}))

	t.Run("raw", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		c.write(get("/x"))
		// The status line byte for byte: ReadResponse would accept variants.
		line, err := c.br.ReadString('\n')
		if err != nil || line != "HTTP/1.1 200 OK\r\n" {
			t.Fatalf("status line %q, %v", line, err)
		}
		hdr, err := textproto.NewReader(c.br).ReadMIMEHeader()
		if err != nil {
			t.Fatal(err)
		}
		for k, want := range map[string]string{
			"Content-Type":   "text/x-nix-narinfo",
			"X-Custom":       "yes",
			"Content-Length": "12",
		} {
			if got := hdr.Values(k); len(got) != 1 || got[0] != want {
				t.Errorf("%s: %q, want %q", k, got, want)
			}
		}
		date, err := http.ParseTime(hdr.Get("Date"))
		if err != nil {
			t.Errorf("Date %q: %v", hdr.Get("Date"), err)
		} else if d := time.Since(date); d < -time.Hour || d > time.Hour {
			t.Errorf("Date %v is not now", date) // a very loose check: formatting, not timing
		}
		for _, k := range []string{"Transfer-Encoding", "Connection"} {
			if v, ok := hdr[k]; ok {
				t.Errorf("unexpected %s: %q", k, v)
			}
		}
		body := make([]byte, 12)
		if _, err := io.ReadFull(c.br, body); err != nil || string(body) != "hello, world" {
			t.Fatalf("body %q, %v", body, err)
		}
		// Nothing follows the body: the next response starts cleanly.
		if _, body := c.roundTrip("GET", get("/y")); body != "hello, world" {
			t.Errorf("second body %q", body)
		}
	})

	t.Run("net/http client", func(t *testing.T) {
		resp, err := newClient(t).Get(ts.url() + "/x")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || resp.ContentLength != 12 || string(body) != "hello, world" {
			t.Errorf("got %d, length %d, %q", resp.StatusCode, resp.ContentLength, body)
		}
		if resp.Header.Get("X-Custom") != "yes" || resp.Header.Get("Date") == "" {
			t.Errorf("header %v", resp.Header)
		}
	})
}

func TestResponseFraming(t *testing.T) {
	big := pattern(100 << 10)
	tests := []struct {
		name        string
		proto       string // of the request
		handler     func(http.ResponseWriter)
		wantStatus  int
		wantBody    []byte
		wantLength  int64 // resp.ContentLength; -1: not sent
		wantChunked bool
		wantClose   bool
	}{
		{
			name: "declared length, written in pieces",
			handler: func(w http.ResponseWriter) {
				w.Header().Set("Content-Length", strconv.Itoa(len(big)))
				writeInPieces(w, big, 1000)
			},
			wantBody: big, wantLength: int64(len(big)),
		},
		{
			// Small bodies of unknown length are held back and measured.
			name:     "small unknown length",
			handler:  func(w http.ResponseWriter) { writeInPieces(w, big[:1000], 300) },
			wantBody: big[:1000], wantLength: 1000,
		},
		{
			name:     "unknown length exactly the hold-back buffer",
			handler:  func(w http.ResponseWriter) { writeInPieces(w, big[:holdBack], 1000) },
			wantBody: big[:holdBack], wantLength: holdBack,
		},
		{
			name:     "unknown length one byte over the hold-back buffer",
			handler:  func(w http.ResponseWriter) { writeInPieces(w, big[:holdBack+1], holdBack) },
			wantBody: big[:holdBack+1], wantLength: -1, wantChunked: true,
		},
		{
			name:     "large unknown length in pieces",
			handler:  func(w http.ResponseWriter) { writeInPieces(w, big, 1000) },
			wantBody: big, wantLength: -1, wantChunked: true,
		},
		{
			name:     "large unknown length in one write",
			handler:  func(w http.ResponseWriter) { w.Write(big) },
			wantBody: big, wantLength: -1, wantChunked: true,
		},
		{
			name:     "empty",
			handler:  func(w http.ResponseWriter) {},
			wantBody: nil, wantLength: 0,
		},
		{
			name:       "status without body",
			handler:    func(w http.ResponseWriter) { w.WriteHeader(http.StatusNotFound) },
			wantStatus: http.StatusNotFound, wantBody: nil, wantLength: 0,
		},
		{
			// net/http drops an unparsable Content-Length too.
			name: "invalid declared length is dropped",
			handler: func(w http.ResponseWriter) {
				w.Header().Set("Content-Length", "ten")
				w.Write(big[:10])
			},
			wantBody: big[:10], wantLength: 10,
		},
		{
			name:     "HTTP/1.0 small unknown length",
			proto:    "HTTP/1.0",
			handler:  func(w http.ResponseWriter) { writeInPieces(w, big[:1000], 300) },
			wantBody: big[:1000], wantLength: 1000, wantClose: true,
		},
		{
			// HTTP/1.0 has no chunked encoding: the body ends with the connection.
			name:     "HTTP/1.0 large unknown length",
			proto:    "HTTP/1.0",
			handler:  func(w http.ResponseWriter) { writeInPieces(w, big, 1000) },
			wantBody: big, wantLength: -1, wantClose: true,
		},
		{
			name:  "HTTP/1.0 declared length",
			proto: "HTTP/1.0",
			handler: func(w http.ResponseWriter) {
				w.Header().Set("Content-Length", strconv.Itoa(len(big)))
				w.Write(big)
			},
			wantBody: big, wantLength: int64(len(big)), wantClose: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, handlerFunc(func(w http.ResponseWriter, r *http.Request) {
				tt.handler(w)
			}))
			proto := cmp.Or(tt.proto, "HTTP/1.1")
			wantStatus := cmp.Or(tt.wantStatus, 200)
			check := func(t *testing.T, resp *http.Response, body string) {
				t.Helper()
				if resp.StatusCode != wantStatus {
					t.Errorf("status %d, want %d", resp.StatusCode, wantStatus)
				}
				if body != string(tt.wantBody) {
					t.Errorf("body: %d bytes, want %d (equal prefix: %v)", len(body), len(tt.wantBody),
						strings.HasPrefix(string(tt.wantBody), body))
				}
				if resp.ContentLength != tt.wantLength {
					t.Errorf("ContentLength %d, want %d", resp.ContentLength, tt.wantLength)
				}
				if chunked := slices.Equal(resp.TransferEncoding, []string{"chunked"}); chunked != tt.wantChunked {
					t.Errorf("TransferEncoding %q, want chunked %v", resp.TransferEncoding, tt.wantChunked)
				}
				if resp.Close != tt.wantClose {
					t.Errorf("Close %v (Connection %q), want %v", resp.Close, resp.Header["Connection"], tt.wantClose)
				}
			}

			c := dialRaw(t, ts.addr)
			resp, body := c.roundTrip("GET", "GET / "+proto+"\r\nHost: test\r\n\r\n")
			check(t, resp, body)
			if tt.wantClose {
				c.expectClosed()
			} else {
				// The framing left the connection usable.
				resp, body = c.roundTrip("GET", get("/again"))
				check(t, resp, body)
			}

			if proto == "HTTP/1.1" {
				resp, err := newClient(t).Get(ts.url())
				if err != nil {
					t.Fatal(err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatal(err)
				}
				check(t, resp, string(body))
			}
		})
	}
}

func TestHEAD(t *testing.T) {
	ts := startServer(t, handlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/known":
			w.Header().Set("Content-Length", "11")
			io.WriteString(w, "hello world")
		case "/unknown-large":
			w.Write(pattern(10 << 10)) // would be chunked for GET
		case "/unknown-small":
			io.WriteString(w, "hi")
		case "/flush":
			w.(http.Flusher).Flush()
			io.WriteString(w, "after flush")
		case "/readfrom":
			w.Header().Set("Content-Length", "5")
			if _, err := w.(io.ReaderFrom).ReadFrom(strings.NewReader("12345")); err != nil {
				t.Errorf("ReadFrom: %v", err)
			}
		}
	}))

	c := dialRaw(t, ts.addr)
	// All in one write: any body bytes after a HEAD response would be read
	// as the start of the next response and fail to parse.
	c.write("HEAD /known HTTP/1.1\r\nHost: t\r\n\r\n" +
		"HEAD /unknown-large HTTP/1.1\r\nHost: t\r\n\r\n" +
		"HEAD /unknown-small HTTP/1.1\r\nHost: t\r\n\r\n" +
		"HEAD /flush HTTP/1.1\r\nHost: t\r\n\r\n" +
		"HEAD /readfrom HTTP/1.1\r\nHost: t\r\n\r\n" +
		get("/known"))

	resp, body := c.read("HEAD")
	if resp.StatusCode != 200 || resp.ContentLength != 11 || body != "" {
		t.Errorf("HEAD /known: %d, length %d, body %q", resp.StatusCode, resp.ContentLength, body)
	}
	for _, path := range []string{"/unknown-large", "/unknown-small", "/flush"} {
		resp, _ := c.read("HEAD")
		// No length is known; no chunked encoding either, which would
		// announce a body.
		if _, ok := resp.Header["Content-Length"]; ok || resp.TransferEncoding != nil {
			t.Errorf("HEAD %s: Content-Length %q, Transfer-Encoding %q", path, resp.Header["Content-Length"], resp.TransferEncoding)
		}
	}
	if resp, _ := c.read("HEAD"); resp.ContentLength != 5 {
		t.Errorf("HEAD /readfrom: length %d", resp.ContentLength)
	}
	// Keep-alive after HEAD, and the GET gets its body.
	if resp, body := c.read("GET"); resp.ContentLength != 11 || body != "hello world" {
		t.Errorf("GET after HEAD: length %d, body %q", resp.ContentLength, body)
	}

	resp, err := newClient(t).Head(ts.url() + "/known")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ContentLength != 11 {
		t.Errorf("client HEAD: length %d", resp.ContentLength)
	}
}

func TestKeepAlive(t *testing.T) {
	var mu sync.Mutex
	remotes := map[string]int{}
	ts := startServer(t, handlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		remotes[r.RemoteAddr]++
		mu.Unlock()
		if r.URL.Path == "/big" {
			// Large and chunked: the next pipelined response must wait for it.
			writeInPieces(w, pattern(100<<10), 777)
			return
		}
		io.WriteString(w, r.URL.Path)
	}))

	t.Run("sequential", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		for i := range 5 {
			path := "/seq/" + strconv.Itoa(i)
			if resp, body := c.roundTrip("GET", get(path)); body != path || resp.Close {
				t.Errorf("request %d: body %q, close %v", i, body, resp.Close)
			}
		}
		mu.Lock()
		n := remotes[c.nc.LocalAddr().String()]
		mu.Unlock()
		if n != 5 {
			t.Errorf("the connection carried %d requests, want 5", n)
		}
	})

	t.Run("pipelined", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		c.write(get("/p1") + get("/big") + get("/p3"))
		if _, body := c.read("GET"); body != "/p1" {
			t.Errorf("first: %q", body)
		}
		if resp, body := c.read("GET"); body != string(pattern(100<<10)) || resp.TransferEncoding == nil {
			t.Errorf("second: %d bytes, chunked %q", len(body), resp.TransferEncoding)
		}
		if _, body := c.read("GET"); body != "/p3" {
			t.Errorf("third: %q", body)
		}
	})

	t.Run("net/http client reuses the connection", func(t *testing.T) {
		mu.Lock()
		clear(remotes)
		mu.Unlock()
		client := newClient(t)
		for i := range 10 {
			resp, err := client.Get(ts.url() + "/c/" + strconv.Itoa(i))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, resp.Body); err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
		}
		mu.Lock()
		defer mu.Unlock()
		if len(remotes) != 1 {
			t.Errorf("10 requests came on %d connections, want 1", len(remotes))
		}
	})
}

func TestConnectionClose(t *testing.T) {
	ts := startServer(t, handlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/handler-closes" {
			w.Header().Set("Connection", "close")
		}
		io.WriteString(w, "ok")
	}))
	tests := []struct {
		name      string
		req       string
		wantClose bool
	}{
		{"Connection: close", "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", true},
		{"close in a token list, any case", "GET / HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, Close\r\n\r\n", true},
		{"close in a second Connection line", "GET / HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", true},
		{"HTTP/1.0", "GET / HTTP/1.0\r\n\r\n", true},
		// HTTP/1.0 keep-alive is deliberately not offered (see readRequest).
		{"HTTP/1.0 asking for keep-alive", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true},
		{"handler sets Connection: close", "GET /handler-closes HTTP/1.1\r\nHost: t\r\n\r\n", true},
		{"HTTP/1.1 keep-alive", "GET / HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n", false},
		{"HTTP/1.1 default", get("/"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, ts.addr)
			resp, body := c.roundTrip("GET", tt.req)
			if body != "ok" {
				t.Errorf("body %q", body)
			}
			if tt.wantClose {
				// ReadResponse turns "Connection: close" into Close.
				if !resp.Close {
					t.Errorf("Close false (Connection %q), want true", resp.Header["Connection"])
				}
				c.expectClosed()
				return
			}
			if got := resp.Header["Connection"]; got != nil {
				t.Errorf("Connection %q, want none", got)
			}
			if _, body := c.roundTrip("GET", get("/")); body != "ok" {
				t.Errorf("second body %q", body)
			}
		})
	}
}

func TestMalformedRequests(t *testing.T) {
	const maxLine, maxHeader = 1024, 4096
	var called atomic.Int32
	ts := startServer(t, &Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			called.Add(1)
			io.WriteString(w, "handled")
		}),
		MaxLineBytes:   maxLine,
		MaxHeaderBytes: maxHeader,
	})
	long := strings.Repeat("a", 2*maxLine)
	manyHeaders := strings.Repeat("X-Filler: "+strings.Repeat("b", 600)+"\r\n", 7) // each line fits, not all
	tests := []struct {
		name      string
		req       string
		halfClose bool // the client shuts down its sending side after req
		want      int
	}{
		{"garbage request line", "GARBAGE\r\n\r\n", false, 400},
		{"empty method", " / HTTP/1.1\r\nHost: t\r\n\r\n", false, 400},
		{"method not a token", "GE(T / HTTP/1.1\r\nHost: t\r\n\r\n", false, 400},
		{"two spaces", "GET  / HTTP/1.1\r\nHost: t\r\n\r\n", false, 400},
		{"extra field in request line", "GET / HTTP/1.1 x\r\nHost: t\r\n\r\n", false, 400},
		{"missing Host in HTTP/1.1", "GET / HTTP/1.1\r\n\r\n", false, 400},
		{"two Host headers", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", false, 400},
		{"header line without colon", "GET / HTTP/1.1\r\nHost: t\r\nNoColon\r\n\r\n", false, 400},
		{"empty header name", "GET / HTTP/1.1\r\nHost: t\r\n: v\r\n\r\n", false, 400},
		{"space before colon", "GET / HTTP/1.1\r\nHost : t\r\n\r\n", false, 400},
		{"space in header name", "GET / HTTP/1.1\r\nHost: t\r\nX Y: v\r\n\r\n", false, 400},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n folded\r\n\r\n", false, 400},
		{"obs-fold with tab", "GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n\tfolded\r\n\r\n", false, 400},
		{"first header line starts with space", "GET / HTTP/1.1\r\n Host: t\r\n\r\n", false, 400},
		{"control character in header value", "GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n", false, 400},
		{"NUL in header value", "GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n", false, 400},
		{"control character in target", "GET /a\x01b HTTP/1.1\r\nHost: t\r\n\r\n", false, 400},
		{"DEL in target", "GET /a\x7fb HTTP/1.1\r\nHost: t\r\n\r\n", false, 400},
		{"relative target", "GET a/b HTTP/1.1\r\nHost: t\r\n\r\n", false, 400},
		{"malformed absolute target", "GET http://[::1/x HTTP/1.1\r\nHost: t\r\n\r\n", false, 400},
		{"bad escape in target", "GET /a%zz HTTP/1.1\r\nHost: t\r\n\r\n", false, 400},
		{"asterisk target for GET", "GET * HTTP/1.1\r\nHost: t\r\n\r\n", false, 400},
		{"HTTP/2.0", "GET / HTTP/2.0\r\nHost: t\r\n\r\n", false, 505},
		{"HTTP/0.9", "GET / HTTP/0.9\r\nHost: t\r\n\r\n", false, 505},
		{"malformed version", "GET / HTTP/1.x\r\nHost: t\r\n\r\n", false, 400},
		{"lower-case version", "GET / http/1.1\r\nHost: t\r\n\r\n", false, 400},
		{"Transfer-Encoding and Content-Length", "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n", false, 400},
		{"Transfer-Encoding gzip", "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", false, 501},
		{"Transfer-Encoding gzip, chunked", "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false, 501},
		{"two Transfer-Encoding lines", "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", false, 501},
		{"Content-Length abc", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n", false, 400},
		{"Content-Length -1", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", false, 400},
		{"Content-Length -0", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -0\r\n\r\n", false, 400},
		{"Content-Length +5", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello", false, 400},
		{"Content-Length empty", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length:\r\n\r\n", false, 400},
		{"Content-Length list", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc", false, 400},
		{"Content-Length overflow", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999\r\n\r\n", false, 400},
		{"conflicting Content-Length", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", false, 400},
		{"request line too long", "GET /" + long + " HTTP/1.1\r\nHost: t\r\n\r\n", false, 414},
		{"header line too long", "GET / HTTP/1.1\r\nHost: t\r\nX-Long: " + long + "\r\n\r\n", false, 431},
		{"headers too large", "GET / HTTP/1.1\r\nHost: t\r\n" + manyHeaders + "\r\n", false, 431},
		{"unsupported Expect", "POST / HTTP/1.1\r\nHost: t\r\nExpect: something-else\r\nContent-Length: 3\r\n\r\nabc", false, 417},
		{"truncated header line", "GET / HTTP/1.1\r\nHost: t\r\nX-Partial", true, 400},
		{"truncated request line", "GET / HTTP/1.1", true, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := called.Load()
			c := dialRaw(t, ts.addr)
			c.write(tt.req)
			if tt.halfClose {
				if err := c.nc.(*net.TCPConn).CloseWrite(); err != nil {
					t.Fatal(err)
				}
			}
			resp, body := c.read("GET")
			if resp.StatusCode != tt.want {
				t.Errorf("status %d (%q), want %d", resp.StatusCode, body, tt.want)
			}
			if !resp.Close || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" || body == "" {
				t.Errorf("Close %v, Content-Type %q, body %q", resp.Close, resp.Header.Get("Content-Type"), body)
			}
			if resp.Header.Get("Date") == "" {
				t.Error("no Date")
			}
			c.expectClosed()
			if n := called.Load() - before; n != 0 {
				t.Errorf("handler called %d times", n)
			}
		})
	}

	// The limits are exact: a request at the limits is served.
	t.Run("at the limits", func(t *testing.T) {
		reqLine := "GET /" + strings.Repeat("a", maxLine-len("GET / HTTP/1.1\r\n")) + " HTTP/1.1\r\n"
		hdrLine := "X-Long: " + strings.Repeat("b", maxLine-len("X-Long: \r\n")) + "\r\n"
		if len(reqLine) != maxLine || len(hdrLine) != maxLine {
			t.Fatal("bad test")
		}
		// Header bytes are counted without line endings.
		host := "Host: t\r\n"
		rest := maxHeader - (len(host) - 2) - (len(hdrLine) - 2)
		filler := ""
		for rest > 0 {
			n := min(rest, 1000)
			filler += "X-F: " + strings.Repeat("c", n-len("X-F: ")) + "\r\n"
			rest -= n
		}
		c := dialRaw(t, ts.addr)
		if resp, body := c.roundTrip("GET", reqLine+host+hdrLine+filler+"\r\n"); resp.StatusCode != 200 || body != "handled" {
			t.Errorf("at the limits: %d %q", resp.StatusCode, body)
		}
		// One more byte of header is too much.
		if resp, _ := c.roundTrip("GET", reqLine+host+hdrLine+filler+"X: \r\n\r\n"); resp.StatusCode != 431 {
			t.Errorf("one byte over: %d", resp.StatusCode)
		}
		c.expectClosed()
	})

	// The server survives all of that.
	if _, body := dialRaw(t, ts.addr).roundTrip("GET", get("/")); body != "handled" {
		t.Errorf("after malformed requests: %q", body)
	}
}

// reqInfo is what a handler saw of a request: the Request itself is reused.
type reqInfo struct {
	Method, RequestURI, Proto, Host string
	ProtoMajor, ProtoMinor          int
	Scheme, URLHost                 string
	Path, RawPath, RawQuery         string
	Header                          http.Header
	ContentLength                   int64
	Close                           bool
	NoBody                          bool
}

func infoOf(r *http.Request) reqInfo {
	return reqInfo{
		Method: r.Method, RequestURI: r.RequestURI, Proto: r.Proto, Host: r.Host,
		ProtoMajor: r.ProtoMajor, ProtoMinor: r.ProtoMinor,
		Scheme: r.URL.Scheme, URLHost: r.URL.Host,
		Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery,
		Header:        r.Header.Clone(),
		ContentLength: r.ContentLength,
		Close:         r.Close,
		NoBody:        r.Body == http.NoBody,
	}
}

func TestRequestParsing(t *testing.T) {
	type seen struct {
		info   reqInfo
		remote string
	}
	got := make(chan seen, 1)
	ts := startServer(t, handlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{infoOf(r), r.RemoteAddr}
	}))
	tests := []struct {
		name string
		req  string
		want reqInfo
	}{
		{
			name: "origin form with query and headers",
			req: "GET /p/q?x=1&y=%20 HTTP/1.1\r\nHost: example.org\r\nx-lower: v\r\nACCEPT: a\r\n" +
				"accept: b\r\nX-Spaced: \t padded \t\r\nX-Empty:\r\nuser-agent: Nix/2.24\r\n\r\n",
			want: reqInfo{
				Method: "GET", RequestURI: "/p/q?x=1&y=%20", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Host: "example.org", Path: "/p/q", RawQuery: "x=1&y=%20",
				Header: http.Header{
					"Host": {"example.org"}, "X-Lower": {"v"}, "Accept": {"a", "b"},
					"X-Spaced": {"padded"}, "X-Empty": {""}, "User-Agent": {"Nix/2.24"},
				},
				NoBody: true,
			},
		},
		{
			name: "percent-encoded path",
			req:  "GET /a%20b/c HTTP/1.1\r\nHost: h\r\n\r\n",
			want: reqInfo{
				Method: "GET", RequestURI: "/a%20b/c", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Host: "h", Path: "/a b/c", Header: http.Header{"Host": {"h"}}, NoBody: true,
			},
		},
		{
			name: "escaped slash keeps the raw path",
			req:  "GET /a%2Fb HTTP/1.1\r\nHost: h\r\n\r\n",
			want: reqInfo{
				Method: "GET", RequestURI: "/a%2Fb", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Host: "h", Path: "/a/b", RawPath: "/a%2Fb", Header: http.Header{"Host": {"h"}}, NoBody: true,
			},
		},
		{
			name: "absolute form sets Host",
			req:  "GET http://example.com/x?y=1 HTTP/1.1\r\nHost: other\r\n\r\n",
			want: reqInfo{
				Method: "GET", RequestURI: "http://example.com/x?y=1", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Host: "example.com", Scheme: "http", URLHost: "example.com", Path: "/x", RawQuery: "y=1",
				Header: http.Header{"Host": {"other"}}, NoBody: true,
			},
		},
		{
			name: "OPTIONS *",
			req:  "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
			want: reqInfo{
				Method: "OPTIONS", RequestURI: "*", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Host: "h", Path: "*", Header: http.Header{"Host": {"h"}}, NoBody: true,
			},
		},
		{
			name: "bare LF line endings",
			req:  "GET /lf HTTP/1.1\nHost: h\nX-A: b\n\n",
			want: reqInfo{
				Method: "GET", RequestURI: "/lf", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Host: "h", Path: "/lf", Header: http.Header{"Host": {"h"}, "X-A": {"b"}}, NoBody: true,
			},
		},
		{
			// RFC 9112 §2.2: one empty line before a request is ignored.
			name: "leading empty line",
			req:  "\r\nGET /e HTTP/1.1\r\nHost: h\r\n\r\n",
			want: reqInfo{
				Method: "GET", RequestURI: "/e", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Host: "h", Path: "/e", Header: http.Header{"Host": {"h"}}, NoBody: true,
			},
		},
		{
			name: "HTTP/1.0 without Host",
			req:  "GET /old HTTP/1.0\r\n\r\n",
			want: reqInfo{
				Method: "GET", RequestURI: "/old", Proto: "HTTP/1.0", ProtoMajor: 1, ProtoMinor: 0,
				Path: "/old", Header: http.Header{}, Close: true, NoBody: true,
			},
		},
		{
			name: "HTTP/1.2 is served as 1.x",
			req:  "GET / HTTP/1.2\r\nHost: h\r\n\r\n",
			want: reqInfo{
				Method: "GET", RequestURI: "/", Proto: "HTTP/1.2", ProtoMajor: 1, ProtoMinor: 2,
				Host: "h", Path: "/", Header: http.Header{"Host": {"h"}}, NoBody: true,
			},
		},
		{
			name: "extension method and Connection: close",
			req:  "PURGE /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
			want: reqInfo{
				Method: "PURGE", RequestURI: "/x", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Host: "h", Path: "/x", Header: http.Header{"Host": {"h"}, "Connection": {"close"}},
				Close: true, NoBody: true,
			},
		},
		{
			name: "HEAD with Content-Length 0",
			req:  "HEAD /h HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
			want: reqInfo{
				Method: "HEAD", RequestURI: "/h", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Host: "h", Path: "/h", Header: http.Header{"Host": {"h"}, "Content-Length": {"0"}}, NoBody: true,
			},
		},
		{
			name: "POST with a body",
			req:  "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
			want: reqInfo{
				Method: "POST", RequestURI: "/p", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Host: "h", Path: "/p", Header: http.Header{"Host": {"h"}, "Content-Length": {"3"}},
				ContentLength: 3,
			},
		},
		{
			name: "chunked POST",
			req:  "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n",
			want: reqInfo{
				Method: "POST", RequestURI: "/c", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Host: "h", Path: "/c", Header: http.Header{"Host": {"h"}, "Transfer-Encoding": {"Chunked"}},
				ContentLength: -1,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, ts.addr)
			c.write(tt.req)
			s := recv(t, got)
			if !reflect.DeepEqual(s.info, tt.want) {
				t.Errorf("got  %+v\nwant %+v", s.info, tt.want)
			}
			if want := c.nc.LocalAddr().String(); s.remote != want {
				t.Errorf("RemoteAddr %q, want %q", s.remote, want)
			}
			c.read(s.info.Method)

			// net/http's parser agrees on the request line and target.
			// (It does not skip a leading empty line.)
			r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(strings.TrimLeft(tt.req, "\r\n"))))
			if err != nil {
				t.Fatal(err)
			}
			if r.Method != s.info.Method || r.RequestURI != s.info.RequestURI || r.Host != s.info.Host ||
				r.URL.Path != s.info.Path || r.URL.RawQuery != s.info.RawQuery || r.Proto != s.info.Proto {
				t.Errorf("net/http parses it as %s %q host %q path %q query %q %s",
					r.Method, r.RequestURI, r.Host, r.URL.Path, r.URL.RawQuery, r.Proto)
			}
		})
	}
}

// TestNoStateLeak checks that the reused Request, Header and ResponseWriter
// carry nothing from one request to the next on a connection.
func TestNoStateLeak(t *testing.T) {
	got := make(chan string, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /one/{id}", func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			t.Errorf("ParseForm: %v", err)
		}
		w.Header().Set("X-Only-First", "1")
		w.Header().Add("Vary", "A")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, "id=%s a=%s", r.PathValue("id"), r.FormValue("a"))
		got <- ""
	})
	mux.HandleFunc("/two", func(w http.ResponseWriter, r *http.Request) {
		// Before this request parses its own form, nothing may be there.
		var leaks []string
		if r.Form != nil || r.PostForm != nil || r.MultipartForm != nil {
			leaks = append(leaks, fmt.Sprintf("form %v %v", r.Form, r.PostForm))
		}
		if r.Header.Get("X-Only-First") != "" || r.Header.Get("X-Req-One") != "" {
			leaks = append(leaks, "request header")
		}
		if r.PathValue("id") != "" || r.Pattern != "/two" {
			leaks = append(leaks, fmt.Sprintf("path value %q, pattern %q", r.PathValue("id"), r.Pattern))
		}
		if r.URL.RawQuery != "" || r.TransferEncoding != nil || r.ContentLength != 3 || r.Close {
			leaks = append(leaks, fmt.Sprintf("query %q, TE %q, length %d, close %v", r.URL.RawQuery, r.TransferEncoding, r.ContentLength, r.Close))
		}
		if len(w.Header()) != 0 {
			leaks = append(leaks, fmt.Sprintf("response header %v", w.Header()))
		}
		if r.FormValue("a") != "" || r.FormValue("b") != "2" {
			leaks = append(leaks, fmt.Sprintf("form values a=%q b=%q", r.FormValue("a"), r.FormValue("b")))
		}
		got <- strings.Join(leaks, "; ")
		io.WriteString(w, "two")
	})
	ts := startServer(t, &Server{Handler: mux})

	c := dialRaw(t, ts.addr)
	c.write("GET /one/7?a=1 HTTP/1.1\r\nHost: t\r\nX-Req-One: yes\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
	resp, body := c.read("GET")
	recv(t, got)
	if resp.StatusCode != 202 || body != "id=7 a=1" || resp.Header.Get("X-Only-First") != "1" {
		t.Fatalf("first response: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	c.write("POST /two HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\nb=2")
	resp, body = c.read("POST")
	if leaks := recv(t, got); leaks != "" {
		t.Errorf("second request saw: %s", leaks)
	}
	if resp.StatusCode != 200 || body != "two" {
		t.Errorf("second response: %d %q", resp.StatusCode, body)
	}
	for _, k := range []string{"X-Only-First", "Vary"} {
		if v, ok := resp.Header[k]; ok {
			t.Errorf("second response has %s: %q", k, v)
		}
	}
}

// echoBody answers with what it read of the body and how reading ended.
func echoBody(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	fmt.Fprintf(w, "%d %q %v", r.ContentLength, b, err)
}

func TestRequestBody(t *testing.T) {
	var mu sync.Mutex
	var readErrs []error
	ts := startServer(t, handlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/echo":
			echoBody(w, r)
		case "/sha":
			h := sha256.New()
			n, err := io.Copy(h, r.Body)
			fmt.Fprintf(w, "%d %x %v", n, h.Sum(nil), err)
		case "/read10":
			b := make([]byte, 10)
			n, _ := io.ReadFull(r.Body, b)
			w.Write(b[:n])
		case "/err":
			_, err := io.ReadAll(r.Body)
			mu.Lock()
			readErrs = append(readErrs, err)
			mu.Unlock()
			io.WriteString(w, "read")
		default: // the body is left unread
			io.WriteString(w, "ignored "+r.URL.Path)
		}
	}))

	t.Run("net/http client, large body", func(t *testing.T) {
		body := pattern(3 << 20)
		resp, err := newClient(t).Post(ts.url()+"/sha", "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("%d %x <nil>", len(body), sha256.Sum256(body)); string(got) != want {
			t.Errorf("got %q, want %q", got, want)
		}
	})

	tests := []struct {
		name  string
		req   string
		want  string // first response's body
		after bool   // the connection carries a second request
	}{
		{"Content-Length read",
			"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
			`5 "hello" <nil>`, true},
		{"Content-Length unread is drained",
			"POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n" + string(pattern(5000)),
			"ignored /ignore", true},
		{"Content-Length partly read is drained",
			"POST /read10 HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n" + string(pattern(5000)),
			string(pattern(10)), true},
		{"drained up to the limit",
			"POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: " + strconv.Itoa(maxDrain) + "\r\n\r\n" + string(pattern(maxDrain)),
			"ignored /ignore", true},
		{"chunked read",
			"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
			`-1 "hello world" <nil>`, true},
		{"chunked with trailer",
			"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: v\r\nX-Other: w\r\n\r\n",
			`-1 "hello" <nil>`, true},
		{"chunked unread is drained",
			"POST /ignore HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: v\r\n\r\n",
			"ignored /ignore", true},
		// Go's chunked reader refuses bare LF in chunk framing (a request
		// smuggling guard), unlike in the header.
		{"chunk size line ending with bare LF",
			"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
			`-1 "" chunked line ends with bare LF`, false},
		// Without the empty line, the next request would be taken for a
		// trailer: refused, not swallowed.
		{"trailer section not ended",
			"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n",
			`-1 "a" http1: malformed trailer line`, false},
		// A body that cannot be read to its end leaves the connection
		// unusable: what follows could be anything.
		{"malformed chunk size",
			"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
			`-1 "" invalid byte in chunk length`, false},
		{"malformed trailer",
			"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nnot a field\r\n\r\n",
			`-1 "a" http1: malformed trailer line`, false},
		{"chunked unread, malformed",
			"POST /ignore HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
			"ignored /ignore", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, ts.addr)
			// The second request follows at once, as a pipelining client's
			// would: it must not be mistaken for body.
			wrote := make(chan error, 1)
			go func() {
				_, err := io.WriteString(c.nc, tt.req+get("/next"))
				wrote <- err
			}()
			if _, body := c.read("POST"); body != tt.want {
				t.Errorf("body %q, want %q", body, tt.want)
			}
			if !tt.after {
				// The server closes without reading on: the write may fail.
				c.expectClosed()
				return
			}
			if _, body := c.read("GET"); body != "ignored /next" {
				t.Errorf("second response %q", body)
			}
			if err := recv(t, wrote); err != nil {
				t.Errorf("write the requests: %v", err)
			}
		})
	}

	t.Run("too large to drain", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		const n = maxDrain + 64<<10
		done := make(chan struct{})
		go func() {
			defer close(done)
			// The server stops reading: this write may fail, and that is fine.
			_, _ = io.WriteString(c.nc, "POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: "+strconv.Itoa(n)+"\r\n\r\n"+string(pattern(n))+get("/next"))
		}()
		resp, body := c.read("POST")
		if body != "ignored /ignore" {
			t.Errorf("body %q", body)
		}
		if !resp.Close {
			t.Error("response does not announce Connection: close")
		}
		c.expectClosed() // no second response
		<-done
	})

	t.Run("body shorter than Content-Length", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		c.write("POST /err HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
		if err := c.nc.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		c.read("POST")
		c.expectClosed()
		mu.Lock()
		defer mu.Unlock()
		if len(readErrs) != 1 || !errors.Is(readErrs[0], io.ErrUnexpectedEOF) {
			t.Errorf("handler read errors %v, want unexpected EOF", readErrs)
		}
	})
}

func TestExpectContinue(t *testing.T) {
	ts := startServer(t, handlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/reject" {
			w.WriteHeader(http.StatusForbidden) // without reading the body
			return
		}
		echoBody(w, r)
	}))
	const head = "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"

	t.Run("handler reads", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		c.write(head)
		line, err := c.br.ReadString('\n')
		if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
			t.Fatalf("got %q, %v; want 100 Continue", line, err)
		}
		if line, err := c.br.ReadString('\n'); err != nil || line != "\r\n" {
			t.Fatalf("after 100 Continue: %q, %v", line, err)
		}
		c.write("hello")
		if resp, body := c.read("POST"); resp.StatusCode != 200 || body != `5 "hello" <nil>` {
			t.Errorf("final: %d %q", resp.StatusCode, body)
		}
		// And the connection goes on.
		c.write(head)
		if resp, _ := c.read("POST"); resp.StatusCode != 100 {
			t.Errorf("second request: %d, want 100", resp.StatusCode)
		}
		c.write("again")
		if _, body := c.read("POST"); body != `5 "again" <nil>` {
			t.Errorf("second final: %q", body)
		}
	})

	t.Run("handler does not read", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		c.write(strings.Replace(head, "/echo", "/reject", 1))
		// The final answer, with no 100 Continue before it.
		if resp, _ := c.read("POST"); resp.StatusCode != 403 {
			t.Errorf("status %d, want 403", resp.StatusCode)
		}
		// Whether the body will come is unknown: the connection ends.
		c.expectClosed()
	})

	t.Run("HTTP/1.0 gets no 100 Continue", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		c.write("POST /echo HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello")
		if resp, body := c.read("POST"); resp.StatusCode != 200 || body != `5 "hello" <nil>` {
			t.Errorf("got %d %q", resp.StatusCode, body)
		}
	})

	t.Run("net/http client", func(t *testing.T) {
		client := newClient(t)
		client.Transport.(*http.Transport).ExpectContinueTimeout = time.Minute // only the 100 lets it send
		req, _ := http.NewRequest("POST", ts.url()+"/echo", strings.NewReader("hello"))
		req.Header.Set("Expect", "100-continue")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != `5 "hello" <nil>` {
			t.Errorf("got %q", body)
		}
	})
}

// logBuffer collects a server's log.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestHandlerPanic(t *testing.T) {
	var log logBuffer
	entered := make(chan struct{}, 1)
	ts := startServer(t, &Server{
		Logger: slog.New(slog.NewTextHandler(&log, nil)),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/panic":
				io.WriteString(w, "partial") // held back: never sent
				panic("boom")
			case "/abort":
				w.Header().Set("Content-Length", "100")
				w.WriteHeader(200)
				panic(http.ErrAbortHandler)
			case "/bad-status":
				w.WriteHeader(42)
			case "/block":
				entered <- struct{}{}
			}
			io.WriteString(w, "fine")
		}),
	})
	// Another connection is kept open through the panics: one connection's
	// panic must not take the server or its other connections down.
	other := dialRaw(t, ts.addr)
	if _, body := other.roundTrip("GET", get("/")); body != "fine" {
		t.Fatalf("before: %q", body)
	}

	for _, tt := range []struct{ path, wantLog string }{
		{"/panic", "boom"},
		{"/abort", ""}, // quietly
		{"/bad-status", "invalid WriteHeader code 42"},
	} {
		t.Run(tt.path, func(t *testing.T) {
			before := log.String()
			c := dialRaw(t, ts.addr)
			c.write(get(tt.path) + get("/")) // the second is not served
			c.expectClosed()
			logged := strings.TrimPrefix(log.String(), before)
			if tt.wantLog == "" && logged != "" {
				t.Errorf("logged %q, want nothing", logged)
			}
			if tt.wantLog != "" && (!strings.Contains(logged, "handler panic") || !strings.Contains(logged, tt.wantLog)) {
				t.Errorf("logged %q, want a panic with %q", logged, tt.wantLog)
			}
		})
	}

	if _, body := other.roundTrip("GET", get("/")); body != "fine" {
		t.Errorf("after, same connection: %q", body)
	}
	if _, body := dialRaw(t, ts.addr).roundTrip("GET", get("/")); body != "fine" {
		t.Errorf("after, new connection: %q", body)
	}
}

func TestHandlerMisbehaviour(t *testing.T) {
	writeErrs := make(chan []error, 1)
	ts := startServer(t, handlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var errs []error
		write := func(s string) {
			_, err := io.WriteString(w, s)
			errs = append(errs, err)
		}
		defer func() { writeErrs <- errs }()
		switch r.URL.Path {
		case "/short":
			w.Header().Set("Content-Length", "10")
			write("12345")
		case "/long":
			w.Header().Set("Content-Length", "5")
			write("123")
			write("456") // would pass the declared length: refused whole
			write("45")
		case "/204", "/304":
			code, _ := strconv.Atoi(r.URL.Path[1:])
			w.WriteHeader(code)
			write("body")
		case "/twice":
			w.WriteHeader(http.StatusCreated)
			w.WriteHeader(http.StatusInternalServerError) // ignored
			write("x")
		case "/informational":
			w.WriteHeader(http.StatusContinue) // not sent; the final status follows
			write("y")
		case "/injection":
			w.Header().Set("X-Evil", "a\r\nX-Injected: 1")
			w.Header()["Bad Name"] = []string{"v"}
			w.Header().Set("Transfer-Encoding", "identity") // the server's to decide
			write("z")
		}
	}))

	t.Run("short body closes the connection", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		c.write(get("/short") + get("/204"))
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		if string(body) != "12345" || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("body %q, %v; want 12345 and unexpected EOF", body, err)
		}
		if errs := recv(t, writeErrs); errs[0] != nil {
			t.Errorf("write: %v", errs)
		}
	})

	t.Run("writing past Content-Length", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		if _, body := c.roundTrip("GET", get("/long")); body != "12345" {
			t.Errorf("body %q", body)
		}
		if errs := recv(t, writeErrs); !reflect.DeepEqual(errs, []error{nil, http.ErrContentLength, nil}) {
			t.Errorf("writes returned %v", errs)
		}
		// The response was complete: the connection goes on.
		if _, body := c.roundTrip("GET", get("/twice")); body != "x" {
			t.Errorf("next: %q", body)
		}
		recv(t, writeErrs)
	})

	t.Run("no body for 204 and 304", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		// Pipelined: body bytes after either would break the next response.
		c.write(get("/204") + get("/304") + get("/twice"))
		for _, want := range []int{204, 304} {
			resp, _ := c.read("GET")
			if resp.StatusCode != want {
				t.Errorf("status %d, want %d", resp.StatusCode, want)
			}
			if v, ok := resp.Header["Content-Length"]; ok || resp.TransferEncoding != nil {
				t.Errorf("%d: Content-Length %q, Transfer-Encoding %q", want, v, resp.TransferEncoding)
			}
			if errs := recv(t, writeErrs); !reflect.DeepEqual(errs, []error{http.ErrBodyNotAllowed}) {
				t.Errorf("%d: write returned %v", want, errs)
			}
		}
		if resp, body := c.read("GET"); resp.StatusCode != 201 || body != "x" {
			t.Errorf("after: %d %q", resp.StatusCode, body)
		}
		recv(t, writeErrs)
	})

	t.Run("informational status is not sent", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		if resp, body := c.roundTrip("GET", get("/informational")); resp.StatusCode != 200 || body != "y" {
			t.Errorf("got %d %q", resp.StatusCode, body)
		}
		recv(t, writeErrs)
	})

	t.Run("header injection", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		resp, body := c.roundTrip("GET", get("/injection"))
		recv(t, writeErrs)
		if body != "z" || resp.Header.Get("X-Injected") != "" || resp.Header.Get("X-Evil") != "a  X-Injected: 1" {
			t.Errorf("body %q, header %v", body, resp.Header)
		}
		if resp.TransferEncoding != nil || resp.ContentLength != 1 {
			t.Errorf("Transfer-Encoding %q, length %d", resp.TransferEncoding, resp.ContentLength)
		}
		for k := range resp.Header {
			if strings.Contains(k, " ") {
				t.Errorf("header name %q sent", k)
			}
		}
	})
}

func TestReadFrom(t *testing.T) {
	const size = 20 << 20 // more than one sendfile chunk
	if size <= sendfileChunk {
		t.Fatal("the file must span sendfile chunks")
	}
	content := pattern(size)
	// Not a repeating pattern: a misplaced chunk must change the hash.
	for i := 0; i < size; i += 4096 {
		copy(content[i:], strconv.Itoa(i))
	}
	path := filepath.Join(t.TempDir(), "nar")
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
	const off, n = 1<<20 + 7, sendfileChunk + 12345

	copyErrs := make(chan error, 1)
	ts := startServer(t, handlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(path)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		if _, ok := w.(io.ReaderFrom); !ok {
			t.Error("the ResponseWriter is no io.ReaderFrom: no sendfile")
		}
		var cerr error
		switch r.URL.Path {
		case "/whole":
			w.Header().Set("Content-Length", strconv.Itoa(size))
			_, cerr = io.Copy(w, f)
		case "/part":
			if _, err := f.Seek(off, io.SeekStart); err != nil {
				t.Error(err)
			}
			w.Header().Set("Content-Length", strconv.Itoa(n))
			_, cerr = io.Copy(w, io.LimitReader(f, n))
		case "/after-write":
			// Some bytes through Write first, the rest by sendfile.
			w.Header().Set("Content-Length", strconv.Itoa(size))
			w.Write(content[:100])
			if _, err := f.Seek(100, io.SeekStart); err != nil {
				t.Error(err)
			}
			_, cerr = io.Copy(w, f)
		case "/file-longer-than-declared":
			w.Header().Set("Content-Length", strconv.Itoa(size/2))
			_, cerr = io.Copy(w, f)
		case "/file-shorter-than-declared":
			w.Header().Set("Content-Length", strconv.Itoa(size+10))
			_, cerr = io.Copy(w, f)
		case "/reader-known":
			w.Header().Set("Content-Length", "100000")
			_, cerr = w.(io.ReaderFrom).ReadFrom(struct{ io.Reader }{bytes.NewReader(content[:100000])})
		case "/reader-unknown":
			_, cerr = w.(io.ReaderFrom).ReadFrom(struct{ io.Reader }{bytes.NewReader(content[:100000])})
		}
		copyErrs <- cerr
	}))
	sum := func(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

	// fetch reads a response on c, hashing the body as it comes.
	fetch := func(t *testing.T, c *rawConn, method, path string) (*http.Response, string, error) {
		t.Helper()
		c.write(method + " " + path + " HTTP/1.1\r\nHost: t\r\n\r\n")
		resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		_, err = io.Copy(h, resp.Body)
		return resp, fmt.Sprintf("%x", h.Sum(nil)), err
	}

	c := dialRaw(t, ts.addr)
	for _, tt := range []struct {
		path     string
		want     []byte
		chunked  bool
		wantErr  error
		wantHead bool // check HEAD too
	}{
		{path: "/whole", want: content, wantHead: true},
		{path: "/part", want: content[off : off+n]},
		{path: "/after-write", want: content},
		{path: "/file-longer-than-declared", want: content[:size/2], wantErr: http.ErrContentLength},
		{path: "/reader-known", want: content[:100000]},
		{path: "/reader-unknown", want: content[:100000], chunked: true},
	} {
		wantLen := int64(len(tt.want))
		if tt.chunked {
			wantLen = -1
		}
		resp, got, err := fetch(t, c, "GET", tt.path)
		if err != nil || got != sum(tt.want) || resp.ContentLength != wantLen {
			t.Errorf("%s: sha256 %s, length %d, %v; want %s, length %d", tt.path, got, resp.ContentLength, err, sum(tt.want), wantLen)
		}
		if err := recv(t, copyErrs); !errors.Is(err, tt.wantErr) {
			t.Errorf("%s: copy returned %v, want %v", tt.path, err, tt.wantErr)
		}
		if tt.wantHead {
			resp, got, err := fetch(t, c, "HEAD", tt.path)
			if err := recv(t, copyErrs); err != nil {
				t.Errorf("HEAD %s: copy returned %v", tt.path, err)
			}
			if err != nil || got != sum(nil) || resp.ContentLength != int64(len(tt.want)) {
				t.Errorf("HEAD %s: length %d, %v", tt.path, resp.ContentLength, err)
			}
		}
	}

	t.Run("net/http client", func(t *testing.T) {
		resp, err := newClient(t).Get(ts.url() + "/whole")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		h := sha256.New()
		if _, err := io.Copy(h, resp.Body); err != nil || fmt.Sprintf("%x", h.Sum(nil)) != sum(content) {
			t.Errorf("sha256 mismatch, %v", err)
		}
		if err := recv(t, copyErrs); err != nil {
			t.Errorf("copy returned %v", err)
		}
	})

	t.Run("file shorter than declared", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		_, got, err := fetch(t, c, "GET", "/file-shorter-than-declared")
		if !errors.Is(err, io.ErrUnexpectedEOF) || got != sum(content) {
			t.Errorf("got %s, %v; want the whole file and unexpected EOF", got, err)
		}
		// The handler copied the whole file without error; the server
		// then finds the body short of its Content-Length and closes.
		if err := recv(t, copyErrs); err != nil {
			t.Errorf("copy returned %v", err)
		}
		c.expectClosed()
	})
}

func TestFlush(t *testing.T) {
	for _, tt := range []struct {
		path    string
		chunked bool
		first   string
	}{
		{"/chunked", true, "first"},
		{"/known", false, "first"},
		{"/headers-only", true, ""},
	} {
		t.Run(tt.path, func(t *testing.T) {
			release := make(chan struct{})
			var once sync.Once
			unblock := func() { once.Do(func() { close(release) }) }
			ts := startServer(t, handlerFunc(func(w http.ResponseWriter, r *http.Request) {
				f := w.(http.Flusher)
				switch r.URL.Path {
				case "/chunked":
					io.WriteString(w, "first")
					f.Flush()
				case "/known":
					w.Header().Set("Content-Length", "11")
					io.WriteString(w, "first")
					f.Flush()
				case "/headers-only":
					w.Header().Set("X-Early", "yes")
					f.Flush()
				}
				<-release
				io.WriteString(w, "second")
			}))
			t.Cleanup(unblock) // before the server's cleanup, which waits for handlers

			c := dialRaw(t, ts.addr)
			c.write(get(tt.path))
			// All of this arrives while the handler is still blocked.
			resp, err := http.ReadResponse(c.br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if chunked := resp.TransferEncoding != nil; chunked != tt.chunked {
				t.Errorf("chunked %v, want %v", chunked, tt.chunked)
			}
			if tt.path == "/headers-only" && resp.Header.Get("X-Early") != "yes" {
				t.Errorf("header %v", resp.Header)
			}
			first := make([]byte, len(tt.first))
			if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != tt.first {
				t.Fatalf("first part %q, %v", first, err)
			}
			unblock()
			if rest, err := io.ReadAll(resp.Body); err != nil || string(rest) != "second" {
				t.Errorf("rest %q, %v", rest, err)
			}
		})
	}
}

// blockingServer serves "ok" to every request, except that /block waits for
// release after signalling entered.
func blockingServer(t *testing.T) (ts *testServer, entered chan struct{}, release func()) {
	t.Helper()
	entered = make(chan struct{}, 1)
	ch := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	ts = startServer(t, handlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			entered <- struct{}{}
			<-ch
		}
		io.WriteString(w, "ok")
	}))
	t.Cleanup(release) // runs before the server's cleanup
	return ts, entered, release
}

func TestShutdown(t *testing.T) {
	t.Run("graceful", func(t *testing.T) {
		ts, entered, release := blockingServer(t)
		idle := dialRaw(t, ts.addr)
		if _, body := idle.roundTrip("GET", get("/")); body != "ok" {
			t.Fatalf("idle: %q", body)
		}
		active := dialRaw(t, ts.addr)
		active.write(get("/block"))
		recv(t, entered)

		shutdownErr := make(chan error, 1)
		go func() { shutdownErr <- ts.Shutdown(context.Background()) }()

		idle.expectClosed()
		if err := ts.waitServe(t); !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
		if c, err := net.Dial("tcp", ts.addr); err == nil {
			c.Close()
			t.Error("a new connection was accepted after Shutdown")
		}
		// The handler is still blocked, so Shutdown must still be waiting.
		select {
		case err := <-shutdownErr:
			t.Fatalf("Shutdown returned %v with a request in flight", err)
		default:
		}

		release()
		if resp, body := active.read("GET"); resp.StatusCode != 200 || body != "ok" {
			t.Errorf("in-flight request: %d %q", resp.StatusCode, body)
		}
		active.expectClosed() // not kept alive while shutting down
		if err := recv(t, shutdownErr); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		// Serving again is refused.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if err := ts.Serve(ln); !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve after Shutdown: %v", err)
		}
		if _, err := ln.Accept(); err == nil {
			t.Error("Serve left its listener open")
		}
	})

	t.Run("context ends first", func(t *testing.T) {
		ts, entered, release := blockingServer(t)
		c := dialRaw(t, ts.addr)
		c.write(get("/block"))
		recv(t, entered)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := ts.Shutdown(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("Shutdown: %v, want context.Canceled", err)
		}
		// The request still completes.
		release()
		if _, body := c.read("GET"); body != "ok" {
			t.Errorf("body %q", body)
		}
	})

	t.Run("no connections", func(t *testing.T) {
		ts, _, _ := blockingServer(t)
		if err := ts.Shutdown(t.Context()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := ts.waitServe(t); !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})

	t.Run("pipelined request is not started", func(t *testing.T) {
		ts, entered, release := blockingServer(t)
		c := dialRaw(t, ts.addr)
		c.write(get("/block") + get("/"))
		recv(t, entered)
		shutdownErr := make(chan error, 1)
		go func() { shutdownErr <- ts.Shutdown(context.Background()) }()
		if err := ts.waitServe(t); !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
		release()
		if _, body := c.read("GET"); body != "ok" {
			t.Errorf("body %q", body)
		}
		c.expectClosed()
		if err := recv(t, shutdownErr); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
}

func TestClose(t *testing.T) {
	ts, entered, release := blockingServer(t)
	idle := dialRaw(t, ts.addr)
	idle.roundTrip("GET", get("/"))
	active := dialRaw(t, ts.addr)
	active.write(get("/block"))
	recv(t, entered)

	if err := ts.Close(); err != nil {
		t.Fatal(err)
	}
	// Both closed at once, the active one without its response.
	active.expectClosed()
	idle.expectClosed()
	if err := ts.waitServe(t); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve returned %v", err)
	}
	release()
}

func TestServeErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := new(Server).Serve(ln); err == nil {
		t.Error("Serve without a Handler succeeded")
	}
}

func TestIdleTimeout(t *testing.T) {
	bodyErrs := make(chan error, 1)
	ts := startServer(t, &Server{
		IdleTimeout: 200 * time.Millisecond,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPut {
				_, err := io.Copy(io.Discard, r.Body)
				bodyErrs <- err
				return
			}
			io.WriteString(w, "ok")
		}),
	})

	t.Run("silent connection", func(t *testing.T) {
		dialRaw(t, ts.addr).expectClosed()
	})

	t.Run("idle after a response", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		c.roundTrip("GET", get("/"))
		c.expectClosed()
	})

	t.Run("partial request line", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		c.write("GET / HT")
		c.expectClosed() // without an answer
	})

	t.Run("partial headers", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		c.write("GET / HTTP/1.1\r\nHost: t\r\n")
		c.expectClosed()
	})

	t.Run("stalled body", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		c.write("PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nhalf")
		if err := <-bodyErrs; err == nil {
			t.Fatal("the handler read a stalled body without error")
		}
		// The body is unusable: the connection ends after the response.
		c.read("PUT")
		c.expectClosed()
	})

	t.Run("trickling headers", func(t *testing.T) {
		// Bytes keep coming, but the request never completes: the
		// deadline is for the whole request, not for each read.
		c := dialRaw(t, ts.addr)
		c.write("GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				if _, err := c.nc.Write([]byte("a")); err != nil {
					return
				}
			}
		}()
		c.expectClosed()
		close(stop)
		<-done
	})
}

// TestShortTimeoutsMoveOn checks that deadlines shorter than a second still
// follow the connection's progress: a keep-alive client that is never idle
// for long, and a slow but steady reader, are not cut off.
func TestShortTimeoutsMoveOn(t *testing.T) {
	const timeout = 800 * time.Millisecond
	ts := startServer(t, &Server{
		IdleTimeout:  timeout,
		WriteTimeout: timeout,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/big" {
				w.Header().Set("Content-Length", strconv.Itoa(16<<20))
				writeInPieces(w, pattern(16<<20), 64<<10)
				return
			}
			if r.URL.Path == "/count" {
				n, _ := io.Copy(io.Discard, r.Body)
				fmt.Fprint(w, n)
				return
			}
			io.WriteString(w, "ok")
		}),
	})

	t.Run("idle", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		// Two timeouts' worth of requests, each a small fraction of one apart.
		for i := range 20 {
			if _, body := c.roundTrip("GET", get("/")); body != "ok" {
				t.Fatalf("request %d: %q", i, body)
			}
			time.Sleep(timeout / 10)
		}
	})

	t.Run("body", func(t *testing.T) {
		// An upload that takes longer than the timeout in all, but never
		// pauses for long, is read to its end.
		c := dialRaw(t, ts.addr)
		const pieces, size = 40, 1024
		c.write(fmt.Sprintf("PUT /count HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n", pieces*size))
		for range pieces {
			c.write(strings.Repeat("x", size))
			time.Sleep(timeout / 20)
		}
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if want := strconv.Itoa(pieces * size); string(body) != want {
			t.Fatalf("handler read %q bytes, want %s", body, want)
		}
	})

	t.Run("write", func(t *testing.T) {
		c := dialRaw(t, ts.addr)
		if err := c.nc.(*net.TCPConn).SetReadBuffer(64 << 10); err != nil { // little slack in the kernel
			t.Fatal(err)
		}
		c.write(get("/big"))
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		// Read steadily but slowly, so that the response takes longer than
		// the timeout in all.
		start := time.Now()
		var n int64
		buf := make([]byte, 256<<10)
		for {
			m, err := io.ReadFull(resp.Body, buf)
			n += int64(m)
			if err != nil {
				break
			}
			time.Sleep(timeout / 40)
		}
		if n != 16<<20 {
			t.Errorf("read %d bytes of %d", n, 16<<20)
		}
		if time.Since(start) < timeout {
			t.Log("the transfer was quicker than the timeout: this run proves little")
		}
	})
}

func TestWriteTimeout(t *testing.T) {
	writeErr := make(chan error, 1)
	ts := startServer(t, &Server{
		WriteTimeout: 200 * time.Millisecond,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			chunk := pattern(64 << 10)
			for {
				if _, err := w.Write(chunk); err != nil {
					writeErr <- err
					return
				}
			}
		}),
	})
	c := dialRaw(t, ts.addr)
	c.write(get("/")) // and never read
	if err := recv(t, writeErr); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("write error %v, want a deadline", err)
	}
}

func TestContext(t *testing.T) {
	ctxs := make(chan context.Context, 1)
	ts := startServer(t, handlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctxs <- r.Context() // the context may be kept; the Request may not
		io.WriteString(w, r.RemoteAddr)
	}))
	c := dialRaw(t, ts.addr)
	_, body := c.roundTrip("GET", get("/"))
	if want := c.nc.LocalAddr().String(); body != want {
		t.Errorf("RemoteAddr %q, want %q", body, want)
	}
	ctx := recv(t, ctxs)
	if err := ctx.Err(); err != nil {
		t.Fatalf("context ended while the connection is open: %v", err)
	}
	// It lives as long as the connection, across requests.
	c.roundTrip("GET", get("/"))
	recv(t, ctxs)
	if err := ctx.Err(); err != nil {
		t.Fatalf("context ended after the first request: %v", err)
	}
	c.nc.Close()
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("context not cancelled after the client closed")
	}
}

// diffHandler shapes its response from the query, and describes the request
// in the body. It always sets Content-Type, which net/http would otherwise
// sniff and http1 leaves out.
func diffHandler(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Handler", "diff")
	var body []byte
	var err error
	if q.Has("read") {
		body, err = io.ReadAll(r.Body)
	}
	if q.Has("close") {
		w.Header().Set("Connection", "close")
	}
	out := fmt.Appendf(nil, "%s %q %q %q %s host=%q length=%d te=%q close=%v body=%q %v accept=%q\n",
		r.Method, r.URL.Path, r.URL.RawQuery, r.RequestURI, r.Proto, r.Host, r.ContentLength,
		r.TransferEncoding, r.Close, body, err, r.Header.Values("Accept"))
	size, _ := strconv.Atoi(q.Get("size"))
	out = append(out, pattern(size)...)
	if q.Has("cl") {
		w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	}
	if s := q.Get("status"); s != "" {
		code, _ := strconv.Atoi(s)
		w.WriteHeader(code)
	}
	if q.Has("flush") {
		w.(http.Flusher).Flush()
	}
	w.Write(out)
}

// TestDifferentialNetHTTP sends the same requests to http1 and to net/http
// serving the same handler, and compares what comes back.
//
// Intentional differences, skipped per case below:
//   - HTTP/1.0 requests: http1 answers "HTTP/1.1" (RFC 9110 §2.5 allows
//     it) with "Connection: close"; net/http answers "HTTP/1.0" without
//     it. Either way the client sees Close, which is what is compared.
//   - HEAD with a body of unknown length: net/http measures what the handler
//     wrote and sends Content-Length; http1 drops the writes unmeasured and
//     sends no length (a HEAD response needs none).
//   - 304: net/http removes Content-Type (RFC 9110 §15.4.5 metadata rule);
//     http1 sends the handler's header as it is.
//   - "OPTIONS *" reaches the handler, as with net/http's
//     DisableGeneralOptionsHandler, which the net/http side sets.
func TestDifferentialNetHTTP(t *testing.T) {
	ours := startServer(t, &Server{Handler: http.HandlerFunc(diffHandler)})
	theirs := &http.Server{
		Handler:  http.HandlerFunc(diffHandler),
		ErrorLog: log.New(io.Discard, "", 0),
		// http1 passes "OPTIONS *" to the handler; net/http answers it
		// itself unless told not to.
		DisableGeneralOptionsHandler: true,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- theirs.Serve(ln) }()
	t.Cleanup(func() {
		if err := theirs.Close(); err != nil {
			t.Errorf("close net/http server: %v", err)
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("net/http Serve returned %v", err)
		}
	})

	tests := []struct {
		name   string
		method string
		req    string
		ignore []string // header names that differ on purpose (see above)
	}{
		{"simple GET", "GET", get("/"), nil},
		{"query and declared length", "GET", get("/q?cl=1&a=b"), nil},
		{"small unknown length", "GET", get("/s?size=1000"), nil},
		{"large unknown length", "GET", get("/l?size=100000"), nil},
		{"large declared length", "GET", get("/l?size=100000&cl=1"), nil},
		{"flush first", "GET", get("/f?flush=1&size=10"), nil},
		{"HEAD declared length", "HEAD", "HEAD /h?cl=1&size=50 HTTP/1.1\r\nHost: t\r\n\r\n", nil},
		{"HEAD unknown length", "HEAD", "HEAD /h?size=50 HTTP/1.1\r\nHost: t\r\n\r\n", []string{"Content-Length"}},
		{"HEAD large unknown length", "HEAD", "HEAD /h?size=100000 HTTP/1.1\r\nHost: t\r\n\r\n", nil},
		{"404", "GET", get("/nf?status=404"), nil},
		{"204", "GET", get("/nc?status=204"), nil},
		{"304", "GET", get("/nm?status=304"), []string{"Content-Type"}},
		{"500 declared length", "GET", get("/e?status=500&cl=1"), nil},
		{"POST with Content-Length", "POST", "POST /p?read=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", nil},
		{"POST chunked", "POST", "POST /p?read=1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", nil},
		{"POST unread", "POST", "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", nil},
		{"100-continue", "POST", "POST /p?read=1 HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello", nil},
		{"client closes", "GET", "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", nil},
		{"handler closes", "GET", get("/c?close=1"), nil},
		{"HTTP/1.0", "GET", "GET /old?size=10 HTTP/1.0\r\nHost: t\r\n\r\n", nil},
		{"HTTP/1.0 large", "GET", "GET /old?size=100000 HTTP/1.0\r\n\r\n", nil},
		{"absolute form", "GET", "GET http://example.com/abs?x=1 HTTP/1.1\r\nHost: other\r\n\r\n", nil},
		{"OPTIONS *", "OPTIONS", "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", nil},
		{"percent-encoded path", "GET", get("/a%20b/%2F?q=%41"), nil},
		{"bare LF", "GET", "GET /lf HTTP/1.1\nHost: t\nAccept: x\nAccept: y\n\n", nil},
	}
	// exchange sends req on a new connection and returns the final
	// response (after any 100 Continue) with its body.
	exchange := func(t *testing.T, addr, method, req string) (*http.Response, string) {
		c := dialRaw(t, addr)
		c.write(req)
		for {
			resp, body := c.read(method)
			if resp.StatusCode >= 200 {
				return resp, body
			}
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, gotBody := exchange(t, ours.addr, tt.method, tt.req)
			want, wantBody := exchange(t, ln.Addr().String(), tt.method, tt.req)
			if got.Proto != "HTTP/1.1" {
				t.Errorf("version %q", got.Proto)
			}
			if got.StatusCode != want.StatusCode {
				t.Errorf("status %d, net/http %d", got.StatusCode, want.StatusCode)
			}
			if gotBody != wantBody {
				t.Errorf("body\n%.300q\nnet/http\n%.300q", gotBody, wantBody)
			}
			if slices.Contains(tt.ignore, "Content-Length") {
				got.ContentLength = want.ContentLength
			}
			if got.Close != want.Close || got.ContentLength != want.ContentLength ||
				!slices.Equal(got.TransferEncoding, want.TransferEncoding) {
				t.Errorf("close %v, length %d, TE %q; net/http close %v, length %d, TE %q",
					got.Close, got.ContentLength, got.TransferEncoding, want.Close, want.ContentLength, want.TransferEncoding)
			}
			skip := append([]string{"Date"}, tt.ignore...)
			for _, h := range []http.Header{got.Header, want.Header} {
				for _, k := range skip {
					delete(h, k)
				}
			}
			if !reflect.DeepEqual(got.Header, want.Header) {
				t.Errorf("header\n%v\nnet/http\n%v", got.Header, want.Header)
			}
		})
	}
}

// BenchmarkServeNarinfoLike serves a 600-byte response with Content-Length
// to one keep-alive client, as Nix fetches narinfos.
func BenchmarkServeNarinfoLike(b *testing.B) {
	body := pattern(600)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/x-nix-narinfo")
		w.Header().Set("Content-Length", "600")
		w.Write(body)
	})
	run := func(b *testing.B, addr string) {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		br := bufio.NewReader(nc)
		req := []byte("GET /0123456789abcdfghijklmnpqrsvwxyz.narinfo HTTP/1.1\r\nHost: cache\r\nUser-Agent: curl/8 Nix/2.24\r\nAccept: */*\r\n\r\n")
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if _, err := nc.Write(req); err != nil {
				b.Fatal(err)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				b.Fatal(err)
			}
			if n, err := io.Copy(io.Discard, resp.Body); err != nil || n != 600 {
				b.Fatal(n, err)
			}
			resp.Body.Close()
		}
	}
	b.Run("http1", func(b *testing.B) {
		run(b, startServer(b, &Server{Handler: h}).addr)
	})
	b.Run("net-http", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		hs := &http.Server{Handler: h}
		served := make(chan error, 1)
		go func() { served <- hs.Serve(ln) }()
		b.Cleanup(func() {
			if err := hs.Close(); err != nil {
				b.Error(err)
			}
			if err := <-served; !errors.Is(err, http.ErrServerClosed) {
				b.Errorf("net/http Serve returned %v", err)
			}
		})
		run(b, ln.Addr().String())
	})
}
