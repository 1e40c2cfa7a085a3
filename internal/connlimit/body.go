package connlimit

import (
	"errors"
	"io"
	"net/http"
	"time"
)

// BodyDeadline gives every request body d to arrive: a client that sends
// headers and then trickles (or never sends) its body is cut off instead of
// holding a connection and a goroutine forever. The deadline is lifted
// once the body is read, so long responses (log streams) are not affected.
func BodyDeadline(h http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody && (r.ContentLength != 0) {
			rc := http.NewResponseController(w)
			if err := rc.SetReadDeadline(time.Now().Add(d)); err == nil {
				r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc}
			}
		}
		h.ServeHTTP(w, r)
	})
}

type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	done bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) && !b.done {
		b.done = true
		// The body is in; a connection that cannot lift the deadline
		// (none does) would at worst close early: report it as the read's
		// error then.
		if derr := b.rc.SetReadDeadline(time.Time{}); derr != nil {
			return n, derr
		}
	}
	return n, err
}
