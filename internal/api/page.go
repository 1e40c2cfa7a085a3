package api

import (
	"bytes"
	"fmt"
	"net/http"

	"github.com/crystal-forge/crystal-forge/internal/web"
)

// index is GET /: the page, or the spec's "Web UI disabled" when
// ENABLE_WEB_UI is off.
func (s *Server) index(w http.ResponseWriter, r *http.Request) {
	if !s.cfg.EnableWebUI {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "Web UI disabled")
		return
	}
	i := s.cfg.Info
	var buf bytes.Buffer
	err := web.Render(&buf, web.Page{
		Hostname:  i.Hostname,
		APIPort:   i.APIPort,
		CachePort: i.CachePort,
		CacheURL:  i.cacheURL(),
		PublicKey: i.PublicKey,
	})
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	w.Write(buf.Bytes())
}
