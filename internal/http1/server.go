// Package http1 is a small HTTP/1.1 server for the binary cache. It serves an
// ordinary http.Handler, without net/http's per-request costs: net/http
// starts a goroutine per request to watch the connection for a client
// hang-up, then cancels it with a deadline and waits for it, and allocates a
// Request, its context and buffers each time. Nix fetches thousands of
// narinfos and small NARs strictly one after another, so those costs (and
// the thread wake-ups they cause) decide how fast a closure copies; see
// docs/benchmarks.md.
//
// Scope: what a binary cache's clients send. Any method reaches the handler;
// keep-alive and pipelining; request bodies with Content-Length or chunked;
// responses with Content-Length, chunked, or (HTTP/1.0) until close;
// io.ReaderFrom on the response turns file bodies into sendfile(2). No
// HTTP/2, TLS, Upgrade or Hijack: use net/http where those are needed.
//
// The Request passed to the handler, its Header and the ResponseWriter are
// reused for the next request on the same connection; handlers must not keep
// them after returning (net/http's documented contract, enforced here).
// r.Context() is the connection's context: it ends when the connection does.
package http1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults, close to nginx's: keepalive_timeout 75s, send_timeout 60s,
// large_client_header_buffers 4 8k.
const (
	DefaultIdleTimeout    = 75 * time.Second
	DefaultWriteTimeout   = 60 * time.Second
	DefaultMaxLineBytes   = 8 << 10
	DefaultMaxHeaderBytes = 32 << 10
)

// Server serves HTTP/1.x connections with Handler.
type Server struct {
	Handler http.Handler
	// IdleTimeout is how long a connection may take, after its previous
	// response, to deliver the next request's line and headers in full,
	// and how long a request body may go without delivering a byte.
	IdleTimeout time.Duration
	// WriteTimeout is how long a write to the client may make no progress
	// before the connection is dropped (not a limit on a whole response).
	WriteTimeout time.Duration
	// MaxLineBytes bounds the request line and each header line;
	// MaxHeaderBytes bounds all header lines together.
	MaxLineBytes   int
	MaxHeaderBytes int
	// Logger receives handler panics and accept errors; nil means slog.Default().
	Logger *slog.Logger

	inShutdown atomic.Bool
	mu         sync.Mutex
	listeners  map[net.Listener]struct{}
	conns      map[*conn]struct{}
	date       atomic.Pointer[dateLine]
	readers    sync.Pool // *bufio.Reader of MaxLineBytes
	writers    sync.Pool // *bufio.Writer
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = http.ErrServerClosed

func (s *Server) idleTimeout() time.Duration {
	if s.IdleTimeout > 0 {
		return s.IdleTimeout
	}
	return DefaultIdleTimeout
}

func (s *Server) writeTimeout() time.Duration {
	if s.WriteTimeout > 0 {
		return s.WriteTimeout
	}
	return DefaultWriteTimeout
}

func (s *Server) maxLine() int {
	if s.MaxLineBytes > 0 {
		return s.MaxLineBytes
	}
	return DefaultMaxLineBytes
}

func (s *Server) maxHeader() int {
	if s.MaxHeaderBytes > 0 {
		return s.MaxHeaderBytes
	}
	return DefaultMaxHeaderBytes
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// Serve accepts connections on ln until Shutdown or Close, and then returns
// ErrServerClosed. It closes ln.
func (s *Server) Serve(ln net.Listener) error {
	if s.Handler == nil {
		return errors.New("http1: no handler")
	}
	s.mu.Lock()
	if s.inShutdown.Load() {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	if s.listeners == nil {
		s.listeners = make(map[net.Listener]struct{})
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()

	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.inShutdown.Load() {
				return ErrServerClosed
			}
			// Out of file descriptors and the like: wait and retry, as
			// net/http does, instead of spinning or giving up.
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.logger().Warn("http1: accept", "err", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("http1: accept: %w", err)
		}
		backoff = 0
		c := s.newConn(nc)
		if c == nil {
			nc.Close() // shutting down
			continue
		}
		go c.serve()
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// Shutdown stops accepting, closes idle connections, and waits for the
// active ones to finish their current response, or for ctx to end.
func (s *Server) Shutdown(ctx context.Context) error {
	s.inShutdown.Store(true)
	s.closeListeners()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if s.closeIdle() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Close stops accepting and closes every connection now.
func (s *Server) Close() error {
	s.inShutdown.Store(true)
	s.closeListeners()
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.nc.Close()
	}
	return nil
}

func (s *Server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ln := range s.listeners {
		ln.Close()
	}
}

// closeIdle closes connections waiting for a request and reports whether
// none are left.
func (s *Server) closeIdle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c.state.CompareAndSwap(stateIdle, stateClosed) {
			c.nc.Close()
		}
	}
	return len(s.conns) == 0
}

func (s *Server) newConn(nc net.Conn) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inShutdown.Load() {
		return nil
	}
	c := &conn{srv: s, nc: nc}
	if s.conns == nil {
		s.conns = make(map[*conn]struct{})
	}
	s.conns[c] = struct{}{}
	return c
}

func (s *Server) forget(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *Server) getReader(r io.Reader) *bufio.Reader {
	if br, ok := s.readers.Get().(*bufio.Reader); ok {
		br.Reset(r)
		return br
	}
	return bufio.NewReaderSize(r, s.maxLine())
}

func (s *Server) getWriter(w io.Writer) *bufio.Writer {
	if bw, ok := s.writers.Get().(*bufio.Writer); ok {
		bw.Reset(w)
		return bw
	}
	return bufio.NewWriterSize(w, 4<<10)
}

// dateLine is a rendered "Date: ...\r\n" header for one second.
type dateLine struct {
	unix int64
	line []byte
}

// dateHeader returns the Date header line, formatted at most once a second.
func (s *Server) dateHeader(now time.Time) []byte {
	sec := now.Unix()
	if d := s.date.Load(); d != nil && d.unix == sec {
		return d.line
	}
	d := &dateLine{unix: sec}
	d.line = append([]byte("Date: "), now.UTC().AppendFormat(nil, http.TimeFormat)...)
	d.line = append(d.line, "\r\n"...)
	s.date.Store(d)
	return d.line
}

// Connection states, for Shutdown: an idle connection may be closed, an
// active one is left to finish its response.
const (
	stateIdle int32 = iota
	stateActive
	stateClosed
)

type conn struct {
	srv   *Server
	nc    net.Conn
	state atomic.Int32
	br    *bufio.Reader
	bw    *bufio.Writer
	cw    deadlineWriter
	base  *http.Request // the connection's context and address
	req   *http.Request // reset from base for each request
	url   url.URL
	hdr   http.Header
	body  body
	res   response

	readDeadline time.Time // last read deadline set
	// linger: input may be left unread when the connection closes, and a
	// close with unread input sends a reset that can destroy the response
	// before the client reads it.
	linger bool
}

// lingerTime bounds how long a closing connection reads and drops what the
// client still sends (nginx's lingering_time, shorter).
const lingerTime = 5 * time.Second

// lingerClose ends the sending side after the response, then reads and
// drops what the client still sends until it stops or lingerTime passes,
// so the close is not a reset that destroys the answer before the client
// reads it. A client refused in the middle of a large upload (a 401 for a
// NAR PUT) keeps writing until it sees the answer; stopping to read after
// a fixed number of bytes would reset it.
func (c *conn) lingerClose() {
	cw, ok := c.nc.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	if err := c.nc.SetReadDeadline(time.Now().Add(lingerTime)); err != nil {
		return
	}
	_, _ = io.Copy(io.Discard, c.nc) // best effort: the connection closes next
}

func (c *conn) serve() {
	s := c.srv
	ctx, cancel := context.WithCancel(context.Background())
	rw := rawIO(c.nc)
	c.br = s.getReader(rw)
	c.cw = deadlineWriter{nc: c.nc, w: rw, timeout: s.writeTimeout()}
	c.bw = s.getWriter(&c.cw)
	c.hdr = make(http.Header, 8)
	c.base = new(http.Request).WithContext(ctx)
	c.base.RemoteAddr = c.nc.RemoteAddr().String()
	c.req = new(http.Request)
	c.body.c = c
	c.res.c = c
	c.res.hdr = make(http.Header, 8)
	defer func() {
		cancel()
		if c.linger {
			c.lingerClose()
		}
		c.nc.Close()
		s.forget(c)
		c.br.Reset(nil)
		s.readers.Put(c.br)
		c.bw.Reset(nil)
		s.writers.Put(c.bw)
	}()

	for {
		c.extendReadDeadline()
		if _, err := c.br.Peek(1); err != nil {
			return // closed, timed out, or closed by Shutdown
		}
		if !c.state.CompareAndSwap(stateIdle, stateActive) {
			return // Shutdown closed it meanwhile
		}
		if err := c.readRequest(); err != nil {
			var pe *protocolError
			if errors.As(err, &pe) {
				c.writeError(pe)
				c.linger = true
			}
			return
		}
		// The response ends the connection if the client asked (r.Close)
		// or the response requires it (serveRequest reports both).
		if !c.serveRequest() || s.inShutdown.Load() {
			// A response that did not read the whole body (an upload
			// refused before it was read) closes the connection: linger,
			// or the close resets the connection before the client has
			// read the answer.
			c.linger = c.body.unread()
			return
		}
		if !c.body.drain() {
			c.linger = true
			return
		}
		if !c.state.CompareAndSwap(stateActive, stateIdle) {
			return
		}
	}
}

// extendReadDeadline moves the read deadline IdleTimeout ahead, at most once
// per deadlineSlack: each move is a runtime timer update, and a request per
// microsecond should not pay for one each.
func (c *conn) extendReadDeadline() {
	now := time.Now()
	timeout := c.srv.idleTimeout()
	d := now.Add(timeout)
	if d.Sub(c.readDeadline) < deadlineSlack(timeout) {
		return
	}
	c.readDeadline = d
	c.nc.SetReadDeadline(d)
}

// serveRequest runs the handler and completes the response. It reports
// whether the connection can carry another request.
func (c *conn) serveRequest() (ok bool) {
	w := &c.res
	w.reset(c.req)
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				buf := make([]byte, 64<<10)
				buf = buf[:runtime.Stack(buf, false)]
				c.srv.logger().Error("http1: handler panic", "method", c.req.Method,
					"uri", c.req.RequestURI, "panic", fmt.Sprint(p), "stack", string(buf))
			}
			ok = false
		}
	}()
	c.srv.Handler.ServeHTTP(w, c.req)
	if err := w.finish(); err != nil {
		return false
	}
	return !w.closeAfter
}

// deadlineSlack is how far behind a deadline may lag before it is moved: a
// second, or less for short timeouts, which a one-second lag would consume.
func deadlineSlack(timeout time.Duration) time.Duration {
	return min(time.Second, timeout/8)
}

// deadlineWriter writes to the connection with a write deadline kept
// WriteTimeout ahead, moved at most once per deadlineSlack.
type deadlineWriter struct {
	nc       net.Conn
	w        io.Writer // nc, or raw I/O on its socket
	timeout  time.Duration
	deadline time.Time
}

func (d *deadlineWriter) extend() {
	t := time.Now().Add(d.timeout)
	if t.Sub(d.deadline) >= deadlineSlack(d.timeout) {
		d.deadline = t
		d.nc.SetWriteDeadline(t)
	}
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	d.extend()
	return d.w.Write(p)
}
