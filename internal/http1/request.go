package http1

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// protocolError is a request the server answers itself, then closes.
type protocolError struct {
	code int
	msg  string
}

func (e *protocolError) Error() string { return fmt.Sprintf("%d %s", e.code, e.msg) }

func badRequest(msg string) error { return &protocolError{http.StatusBadRequest, msg} }

// maxDrain is how much of an unread request body is read and thrown away to
// keep the connection; beyond that it is closed instead.
const maxDrain = 256 << 10

// readLine returns the next line without its line ending (CRLF, or a bare
// LF, which RFC 9112 lets recipients accept). It is valid until the next read.
func (c *conn) readLine(tooLong int) ([]byte, error) {
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			msg := "request line too long"
			if tooLong == http.StatusRequestHeaderFieldsTooLarge {
				msg = "header line too long"
			}
			return nil, &protocolError{tooLong, msg}
		}
		if len(line) > 0 && errors.Is(err, io.EOF) {
			return nil, badRequest("truncated request")
		}
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// readRequest parses the next request into c.req, reusing its fields;
// r.Close says whether the client lets the connection be kept.
func (c *conn) readRequest() error {
	line, err := c.readLine(http.StatusRequestURITooLong)
	if err != nil {
		return err
	}
	if len(line) == 0 { // RFC 9112 §2.2: ignore one empty line before a request
		if line, err = c.readLine(http.StatusRequestURITooLong); err != nil {
			return err
		}
	}
	method, rest, ok1 := bytes.Cut(line, []byte{' '})
	target, proto, ok2 := bytes.Cut(rest, []byte{' '})
	if !ok1 || !ok2 || len(method) == 0 || !isToken(method) || len(target) == 0 {
		return badRequest("malformed request line")
	}
	r := c.req
	*r = *c.base // every field fresh (Form, Pattern, path values...), same context
	r.URL = &c.url
	switch string(proto) {
	case "HTTP/1.1":
		r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/1.1", 1, 1
	case "HTTP/1.0":
		r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/1.0", 1, 0
	default:
		major, minor, ok := http.ParseHTTPVersion(string(proto))
		switch {
		case !ok:
			return badRequest("malformed HTTP version")
		case major != 1:
			return &protocolError{http.StatusHTTPVersionNotSupported, "HTTP version not supported"}
		}
		r.Proto, r.ProtoMajor, r.ProtoMinor = string(proto), major, minor
	}
	r.Method = internMethod(method)
	for _, b := range target {
		if b <= ' ' || b == 0x7f {
			return badRequest("control character in request target")
		}
	}
	// The path and query share RequestURI's one allocation.
	r.RequestURI = string(target)
	if err := c.parseTarget(r.RequestURI); err != nil {
		return err
	}

	if err := c.readHeaders(); err != nil {
		return err
	}
	h := c.hdr
	r.Header = h
	hosts := h["Host"]
	switch {
	case len(hosts) > 1:
		return badRequest("more than one Host header")
	case len(hosts) == 1:
		r.Host = hosts[0]
	case r.ProtoMinor >= 1:
		return badRequest("missing Host header")
	default:
		r.Host = ""
	}
	if r.URL.Host != "" { // absolute form wins (RFC 9112 §3.2.2)
		r.Host = r.URL.Host
	}

	keepAlive := r.ProtoMinor >= 1
	for _, v := range h["Connection"] {
		for _, tok := range strings.Split(v, ",") {
			switch strings.ToLower(strings.TrimSpace(tok)) {
			case "close":
				keepAlive = false
			case "keep-alive":
				// HTTP/1.0 keep-alive is not offered: such clients are
				// rare, and a close-delimited answer is always right.
			}
		}
	}
	r.Close = !keepAlive

	return c.setBody()
}

// parseTarget sets c.req.URL from the request target.
func (c *conn) parseTarget(target string) error {
	r := c.req
	if target[0] == '/' && !strings.ContainsAny(target, "%#") {
		// Origin form with nothing to unescape: the common case, no allocation.
		path, query, _ := strings.Cut(target, "?")
		c.url = url.URL{Path: path, RawQuery: query}
		return nil
	}
	if target == "*" {
		if r.Method != http.MethodOptions {
			return badRequest("asterisk form is only for OPTIONS")
		}
		c.url = url.URL{Path: "*"}
		return nil
	}
	u, err := url.ParseRequestURI(target)
	if err != nil {
		return badRequest("malformed request target")
	}
	c.url = *u
	return nil
}

// readHeaders reads header lines into c.hdr, cleared first.
func (c *conn) readHeaders() error {
	clear(c.hdr)
	total := 0
	for {
		line, err := c.readLine(http.StatusRequestHeaderFieldsTooLarge)
		if err != nil {
			return err
		}
		if len(line) == 0 {
			return nil
		}
		if total += len(line); total > c.srv.maxHeader() {
			return &protocolError{http.StatusRequestHeaderFieldsTooLarge, "request headers too large"}
		}
		if line[0] == ' ' || line[0] == '\t' {
			return badRequest("obsolete header line folding")
		}
		name, value, ok := bytes.Cut(line, []byte{':'})
		if !ok || len(name) == 0 || !isToken(name) {
			return badRequest("malformed header line")
		}
		value = bytes.Trim(value, " \t")
		for _, b := range value {
			if b < ' ' && b != '\t' || b == 0x7f {
				return badRequest("control character in header value")
			}
		}
		key := canonicalKey(name)
		c.hdr[key] = append(c.hdr[key], string(value))
	}
}

// setBody sets the request's body from Content-Length or Transfer-Encoding.
func (c *conn) setBody() error {
	r, h := c.req, c.hdr
	c.body.reset()
	r.TransferEncoding = nil
	te, cl := h["Transfer-Encoding"], h["Content-Length"]
	switch {
	case len(te) > 0 && len(cl) > 0:
		// Request smuggling guard (RFC 9112 §6.3).
		return badRequest("both Transfer-Encoding and Content-Length")
	case len(te) > 0:
		if len(te) != 1 || !strings.EqualFold(strings.TrimSpace(te[0]), "chunked") {
			return &protocolError{http.StatusNotImplemented, "unsupported Transfer-Encoding"}
		}
		r.TransferEncoding = []string{"chunked"}
		r.ContentLength = -1
		c.body.r = httputil.NewChunkedReader(c.br)
	case len(cl) > 0:
		for _, v := range cl[1:] {
			if v != cl[0] {
				return badRequest("conflicting Content-Length headers")
			}
		}
		// 1*DIGIT (RFC 9110 §8.6): ParseUint takes no sign, so "+5" and "-0" fail.
		n, err := strconv.ParseUint(cl[0], 10, 63)
		if err != nil {
			return badRequest("malformed Content-Length")
		}
		r.ContentLength = int64(n)
		if n > 0 {
			c.body.r = &c.body.limited
			c.body.limited = io.LimitedReader{R: c.br, N: int64(n)}
		}
	default:
		r.ContentLength = 0
	}
	if c.body.r == nil {
		r.Body = http.NoBody
		return nil
	}
	if e := h.Get("Expect"); e != "" {
		if !strings.EqualFold(e, "100-continue") {
			return &protocolError{http.StatusExpectationFailed, "unsupported Expect"}
		}
		c.body.sendContinue = r.ProtoMinor >= 1
	}
	r.Body = &c.body
	return nil
}

// body is a request body read from the connection.
type body struct {
	c            *conn
	r            io.Reader // nil: no body
	limited      io.LimitedReader
	sendContinue bool // "100 Continue" is owed before the first read
	eof          bool
	err          error
}

func (b *body) reset() { *b = body{c: b.c} }

func (b *body) Read(p []byte) (int, error) {
	if b.r == nil || b.eof {
		return 0, io.EOF
	}
	if b.err != nil {
		return 0, b.err
	}
	if b.sendContinue {
		b.sendContinue = false
		if b.c.res.committed {
			return 0, b.fail(errors.New("http1: body read after the response began"))
		}
		if _, err := io.WriteString(b.c.bw, "HTTP/1.1 100 Continue\r\n\r\n"); err != nil {
			return 0, b.fail(err)
		}
		if err := b.c.bw.Flush(); err != nil {
			return 0, b.fail(err)
		}
	}
	// A body may take longer than IdleTimeout in all (a big upload): the
	// deadline moves with each read, so only a stalled client is cut off.
	b.c.extendReadDeadline()
	n, err := b.r.Read(p)
	if errors.Is(err, io.EOF) {
		if b.r == &b.limited && b.limited.N > 0 {
			return n, b.fail(io.ErrUnexpectedEOF)
		}
		if b.r != &b.limited {
			// The chunked reader stops after the last chunk's size line;
			// the trailer section, up to its empty line, is ours to read.
			if err := b.c.skipTrailer(); err != nil {
				return n, b.fail(err)
			}
		}
		b.eof = true
		return n, io.EOF
	}
	if err != nil {
		return n, b.fail(err)
	}
	return n, nil
}

func (b *body) fail(err error) error {
	b.err = err
	return err
}

// Close is a no-op: what is left is drained (or the connection closed)
// after the handler returns.
func (b *body) Close() error { return nil }

// skipTrailer reads and drops a chunked body's trailer fields and the empty
// line that ends them.
func (c *conn) skipTrailer() error {
	total := 0
	for {
		line, err := c.readLine(http.StatusRequestHeaderFieldsTooLarge)
		if errors.Is(err, io.EOF) {
			return io.ErrUnexpectedEOF
		}
		if err != nil {
			return err
		}
		if len(line) == 0 {
			return nil
		}
		if total += len(line); total > c.srv.maxHeader() {
			return errors.New("http1: request trailer too large")
		}
		if name, _, ok := bytes.Cut(line, []byte{':'}); !ok || len(name) == 0 || !isToken(name) {
			return errors.New("http1: malformed trailer line")
		}
	}
}

// unread reports whether the client may still be sending body bytes.
func (b *body) unread() bool { return b.r != nil && !b.eof }

// drain reads what the handler left of the body, and reports whether the
// connection can carry another request.
func (b *body) drain() bool {
	if b.r == nil || b.eof {
		return true
	}
	if b.err != nil || b.sendContinue {
		// The client may still be waiting for 100 Continue before sending
		// the body: we cannot tell its bytes from the next request's.
		return false
	}
	n, err := io.CopyN(io.Discard, b, maxDrain+1)
	return n <= maxDrain && errors.Is(err, io.EOF)
}

// writeError answers a request the server could not parse, and the
// connection is closed after it.
func (c *conn) writeError(e *protocolError) {
	msg := e.msg + "\n"
	fmt.Fprintf(c.bw, "HTTP/1.1 %d %s\r\n", e.code, http.StatusText(e.code))
	c.bw.Write(c.srv.dateHeader(time.Now()))
	fmt.Fprintf(c.bw, "Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(msg), msg)
	// The connection is closed next whether or not this reached the client.
	_ = c.bw.Flush()
}

// isToken reports whether b is an RFC 9110 token (method, header name).
func isToken[T string | []byte](b T) bool {
	for i := 0; i < len(b); i++ {
		if ch := b[i]; ch >= 0x80 || !tokenChars[ch] {
			return false
		}
	}
	return true
}

// tokenChars is the RFC 9110 tchar set. It is never written after init.
var tokenChars = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func internMethod(m []byte) string {
	switch string(m) { // no allocation: the compiler compares in place
	case "GET":
		return http.MethodGet
	case "HEAD":
		return http.MethodHead
	case "POST":
		return http.MethodPost
	case "PUT":
		return http.MethodPut
	}
	return string(m)
}

// canonicalKey returns the canonical form of a header name, without
// allocating for the names clients usually send.
func canonicalKey(name []byte) string {
	switch string(name) {
	case "Host", "host":
		return "Host"
	case "User-Agent", "user-agent":
		return "User-Agent"
	case "Accept", "accept":
		return "Accept"
	case "Accept-Encoding", "accept-encoding":
		return "Accept-Encoding"
	case "Connection", "connection":
		return "Connection"
	case "Range", "range":
		return "Range"
	case "Content-Length", "content-length":
		return "Content-Length"
	}
	return http.CanonicalHeaderKey(string(name))
}
