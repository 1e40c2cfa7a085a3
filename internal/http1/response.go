package http1

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// holdBack is how much body a response of unknown length keeps back: if the
// handler finishes within it, the response gets a Content-Length instead of
// chunked encoding (as net/http does).
const holdBack = 4 << 10

// sendfileChunk is how much one sendfile call may send before the write
// deadline is moved on: a client that takes a minute per MiB is dropped, a
// slow one downloading a large NAR is not.
const sendfileChunk = 1 << 20

// response is the http.ResponseWriter, reused for a connection's requests.
type response struct {
	c             *conn
	req           *http.Request
	hdr           http.Header
	status        int
	wroteHeader   bool  // the status is decided
	committed     bool  // the header is in the write buffer
	head          bool  // HEAD: the body is dropped
	noBody        bool  // the status forbids a body (204, 304)
	chunked       bool  // chunked transfer encoding
	contentLength int64 // -1 until known
	written       int64 // body bytes accepted from the handler
	buf           []byte
	closeAfter    bool // the connection ends after this response
}

func (w *response) reset(r *http.Request) {
	clear(w.hdr)
	*w = response{c: w.c, req: r, hdr: w.hdr, buf: w.buf[:0], contentLength: -1,
		head: r.Method == http.MethodHead, closeAfter: r.Close}
}

// Header implements http.ResponseWriter.
func (w *response) Header() http.Header { return w.hdr }

// WriteHeader implements http.ResponseWriter. Informational codes are not
// sent; a second call is ignored.
func (w *response) WriteHeader(code int) {
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("http1: invalid WriteHeader code %d", code))
	}
	if w.wroteHeader || code < 200 {
		return
	}
	w.wroteHeader, w.status = true, code
	w.noBody = code == http.StatusNoContent || code == http.StatusNotModified
	if cl := w.hdr["Content-Length"]; len(cl) > 0 {
		n, err := strconv.ParseInt(cl[0], 10, 64)
		if err != nil || n < 0 {
			delete(w.hdr, "Content-Length") // net/http drops it too
		} else {
			w.contentLength = n
		}
	}
}

// Write implements http.ResponseWriter.
func (w *response) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	switch {
	case w.head:
		return len(p), nil // like net/http: a HEAD handler may write, unseen
	case w.noBody:
		return 0, http.ErrBodyNotAllowed
	case w.contentLength >= 0:
		if w.written+int64(len(p)) > w.contentLength {
			return 0, http.ErrContentLength
		}
		if !w.committed {
			w.commit()
		}
		n, err := w.c.bw.Write(p)
		w.written += int64(n)
		return n, err
	case !w.committed && len(w.buf)+len(p) <= holdBack:
		if w.buf == nil {
			w.buf = make([]byte, 0, holdBack)
		}
		w.buf = append(w.buf, p...)
		w.written += int64(len(p))
		return len(p), nil
	}
	if err := w.startStream(); err != nil {
		return 0, err
	}
	if err := w.writeChunk(p); err != nil {
		return 0, err
	}
	w.written += int64(len(p))
	return len(p), nil
}

// startStream commits a response of unknown length and sends what was held
// back.
func (w *response) startStream() error {
	if w.committed {
		return nil
	}
	w.commit()
	err := w.writeChunk(w.buf)
	w.buf = w.buf[:0]
	return err
}

// writeChunk writes body bytes of a response of unknown length.
func (w *response) writeChunk(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	bw := w.c.bw
	if w.chunked {
		var scratch [20]byte
		bw.Write(strconv.AppendInt(scratch[:0], int64(len(p)), 16))
		bw.WriteString("\r\n")
	}
	bw.Write(p)
	if w.chunked {
		bw.WriteString("\r\n")
	}
	_, err := bw.Write(nil) // bufio keeps the first write error
	return err
}

// Flush implements http.Flusher.
func (w *response) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.startStream() == nil {
		// http.Flusher has no error: bufio keeps it for the next write.
		_ = w.c.bw.Flush()
	}
}

// ReadFrom sends src's bytes; for a file and a response of known length that
// is sendfile(2), with the write deadline moved on between chunks.
func (w *response) ReadFrom(src io.Reader) (int64, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	rf, ok := w.c.nc.(io.ReaderFrom)
	if !ok || w.head || w.noBody || w.contentLength < 0 {
		return io.Copy(writerOnly{w}, src)
	}
	if !w.committed {
		w.commit()
	}
	if err := w.c.bw.Flush(); err != nil {
		return 0, err
	}
	// net's sendfile sees through one *io.LimitedReader, not two: unwrap
	// the caller's and apply its limit ourselves.
	inner, limit := src, int64(-1)
	lr, isLimited := src.(*io.LimitedReader)
	if isLimited {
		inner, limit = lr.R, lr.N
	}
	var total int64
	var err error
	for {
		want := min(int64(sendfileChunk), w.contentLength-w.written)
		if limit >= 0 {
			want = min(want, limit)
		}
		if want <= 0 {
			break
		}
		w.c.cw.extend()
		var n int64
		n, err = rf.ReadFrom(&io.LimitedReader{R: inner, N: want})
		total += n
		w.written += n
		if limit >= 0 {
			limit -= n
		}
		if err != nil || n < want {
			break // an error, or src ended
		}
	}
	if isLimited {
		lr.N = limit
	}
	if err == nil && w.written == w.contentLength && limit != 0 {
		// Content-Length is reached; more from src would be a handler bug.
		var probe [1]byte
		if n, _ := src.Read(probe[:]); n > 0 {
			err = http.ErrContentLength
		}
	}
	return total, err
}

// writerOnly hides ReadFrom so io.Copy does not come back to it.
type writerOnly struct{ io.Writer }

// commit writes the status line and header into the write buffer.
func (w *response) commit() {
	w.committed = true
	r := w.req
	if w.contentLength < 0 && !w.noBody && !w.head {
		if r.ProtoMinor >= 1 {
			w.chunked = true
		} else {
			w.closeAfter = true // HTTP/1.0: the body ends with the connection
		}
	}
	if b := &w.c.body; b.r != nil && !b.eof && (b.sendContinue || b.r == &b.limited && b.limited.N > maxDrain) {
		w.closeAfter = true // the unread body will not be drained: say so
	}
	for _, v := range w.hdr["Connection"] {
		if strings.Contains(strings.ToLower(v), "close") {
			w.closeAfter = true
		}
	}
	bw := w.c.bw
	if w.status == http.StatusOK {
		bw.WriteString("HTTP/1.1 200 OK\r\n")
	} else {
		var scratch [8]byte
		bw.WriteString("HTTP/1.1 ")
		bw.Write(strconv.AppendInt(scratch[:0], int64(w.status), 10))
		bw.WriteString(" ")
		bw.WriteString(http.StatusText(w.status))
		bw.WriteString("\r\n")
	}
	for k, vs := range w.hdr {
		switch k {
		case "Connection", "Transfer-Encoding":
			continue // ours to decide
		}
		if !isToken(k) {
			continue // net/http drops invalid names too
		}
		for _, v := range vs {
			if strings.ContainsAny(v, "\r\n") {
				v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
			}
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	if _, ok := w.hdr["Date"]; !ok {
		bw.Write(w.c.srv.dateHeader(time.Now()))
	}
	if _, ok := w.hdr["Content-Length"]; !ok && w.contentLength >= 0 && !w.noBody {
		var scratch [20]byte
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(scratch[:0], w.contentLength, 10))
		bw.WriteString("\r\n")
	}
	if w.chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if w.closeAfter {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
}

// finish completes the response after the handler returned, and flushes it.
func (w *response) finish() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		if w.contentLength < 0 && !w.noBody && !w.head {
			w.contentLength = int64(len(w.buf)) // it all fit: no chunking
		}
		w.commit()
		w.c.bw.Write(w.buf)
		w.buf = w.buf[:0]
	}
	if w.chunked {
		w.c.bw.WriteString("0\r\n\r\n")
	}
	if w.contentLength >= 0 && !w.head && !w.noBody && w.written < w.contentLength {
		w.closeAfter = true // short body: the client sees the connection end early
	}
	return w.c.bw.Flush()
}
