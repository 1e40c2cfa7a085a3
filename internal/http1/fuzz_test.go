package http1

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// memConn is a connection that reads a fixed input, then EOF, and keeps what
// is written. A fuzz run over it is deterministic and cannot block on a peer.
// It is no syscall.Conn, so the server falls back to its Read and Write.
type memConn struct {
	in  io.Reader
	out bytes.Buffer
}

func (c *memConn) Read(p []byte) (int, error)       { return c.in.Read(p) }
func (c *memConn) Write(p []byte) (int, error)      { return c.out.Write(p) }
func (c *memConn) Close() error                     { return nil }
func (c *memConn) LocalAddr() net.Addr              { return memAddr{} }
func (c *memConn) RemoteAddr() net.Addr             { return memAddr{} }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }

type memAddr struct{}

func (memAddr) Network() string { return "mem" }
func (memAddr) String() string  { return "mem:1" }

// fuzzHandler answers in one of several ways, chosen by the path's length,
// and checks what it was given.
func fuzzHandler(t *testing.T, methods *[]string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		*methods = append(*methods, r.Method)
		// t.Errorf, not Fatal: this runs on the server's goroutine.
		if !isToken(r.Method) || r.URL == nil || !strings.HasPrefix(r.Proto, "HTTP/1.") ||
			strings.ContainsAny(r.Host, "\r\n\x00") || r.Body == nil {
			t.Errorf("handler got method %q, URL %v, proto %q, host %q", r.Method, r.URL, r.Proto, r.Host)
		}
		switch len(r.URL.Path) % 5 {
		case 0:
			b, err := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%d %v", len(b), err)
		case 1:
			w.Header().Set("Content-Length", "2")
			io.WriteString(w, "ok")
		case 2:
			w.Write(pattern(5000)) // chunked, or until close for HTTP/1.0
		case 3:
			// Whether ten bytes are there depends on the input; the
			// server must cope with a handler that reads part of a body.
			_, _ = io.ReadFull(r.Body, make([]byte, 10))
			w.WriteHeader(http.StatusNoContent)
		case 4:
			w.(http.Flusher).Flush()
			io.WriteString(w, "flushed")
		}
	})
}

// FuzzReadRequest feeds arbitrary bytes to a connection and checks that the
// server answers with well-formed HTTP/1.1 responses, one per request it
// handled plus at most one error response last, and stops.
func FuzzReadRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: a\r\n\r\nHEAD /abcd HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
		"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: v\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /xy HTTP/1.0\r\n\r\n",
		"PUT /abcde HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody",
		"GARBAGE\r\n\r\n",
		"GET / HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: " + strings.Repeat("x", 300) + "\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
		"GET http://h/p?q HTTP/1.1\r\nHost: a\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /lf HTTP/1.1\nHost: a\n\nGET /lf2 HTTP/1.1\nHost: a\nConnection: close\n\n",
		"POST /abc HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789GET / HTTP/1.1\r\nHost: a\r\n\r\n",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, trickle bool) {
		var in io.Reader = bytes.NewReader(data)
		if trickle {
			in = iotest.OneByteReader(in) // every boundary a read boundary
		}
		mc := &memConn{in: in}
		var methods []string
		var log logBuffer
		s := &Server{
			Handler:        fuzzHandler(t, &methods),
			Logger:         slog.New(slog.NewTextHandler(&log, nil)),
			MaxLineBytes:   256, // small limits, reached by small inputs
			MaxHeaderBytes: 1024,
		}
		c := &conn{srv: s, nc: mc}
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.serve()
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("serve did not return for %q", data)
		}
		// The handler never panics: a logged panic came from the server's
		// own code under it (Write, Flush, body reads).
		if l := log.String(); strings.Contains(l, "panic") {
			t.Fatalf("panic: %s", l)
		}
		checkResponses(t, data, mc.out.Bytes(), methods)
	})
}

// checkResponses parses out as the responses to requests with methods, as a
// client would.
func checkResponses(t *testing.T, in, out []byte, methods []string) {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(out))
	final := 0
	for {
		if _, err := br.Peek(1); err == io.EOF {
			break
		}
		method := http.MethodGet // for the server's own error response
		if final < len(methods) {
			method = methods[final]
		}
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("response %d: %v\nin:  %q\nout: %q", final, err, in, out)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			t.Fatalf("response %d body: %v\nin:  %q\nout: %q", final, err, in, out)
		}
		if resp.Proto != "HTTP/1.1" {
			t.Fatalf("response %d: version %q", final, resp.Proto)
		}
		if resp.StatusCode < 200 {
			if resp.StatusCode != http.StatusContinue || final >= len(methods) {
				t.Fatalf("response %d: unexpected %s\nin:  %q\nout: %q", final, resp.Status, in, out)
			}
			continue
		}
		if final == len(methods) {
			// A request the server refused: its answer comes last, and
			// closes the connection.
			if resp.StatusCode < 400 || !resp.Close || br.Buffered() > 0 {
				t.Fatalf("error response %s, close %v, %d bytes after\nin:  %q\nout: %q",
					resp.Status, resp.Close, br.Buffered(), in, out)
			}
		} else if final > len(methods) {
			t.Fatalf("more responses than requests handled\nin:  %q\nout: %q", in, out)
		}
		final++
	}
	if final < len(methods) {
		t.Fatalf("%d responses for %d requests handled\nin:  %q\nout: %q", final, len(methods), in, out)
	}
}
