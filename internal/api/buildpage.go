package api

import "net/http"

// buildPage is GET /builds/{id}: the page, opened on that build, so a
// build has a URL to share (400 for a malformed id, 404 for an unknown one).
func (s *Server) buildPage(w http.ResponseWriter, r *http.Request) {
	if !s.cfg.EnableWebUI {
		s.index(w, r)
		return
	}
	if b := s.buildParam(w, r); b == nil {
		return
	}
	s.index(w, r)
}
