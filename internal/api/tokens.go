package api

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/auth"
	"github.com/crystal-forge/crystal-forge/internal/db"
)

// whoami is GET /api/v1/whoami: who the server takes the caller for, and
// what that identity may do (the page shows only the buttons it allows).
func (s *Server) whoami(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	canRead := !s.cfg.Auth.RequireAuthForRead || (!id.Anonymous() && id.Role.Allows(auth.RoleRead))
	writeJSON(w, http.StatusOK, map[string]any{
		"identity":              id.String(),
		"kind":                  id.Kind,
		"name":                  id.Name,
		"node":                  id.Node,
		"tags":                  nonNil(id.Tags),
		"role":                  id.Role,
		"remote":                id.Remote,
		"require_auth_for_read": s.cfg.Auth.RequireAuthForRead,
		"can": map[string]bool{
			"read":    canRead,
			"trigger": !id.Anonymous() && id.Role.Allows(auth.RoleTrigger),
			"admin":   !id.Anonymous() && id.Role.Allows(auth.RoleAdmin),
		},
	})
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	ts, err := s.tokens.List(r.Context())
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ts)
}

// createToken is POST /api/v1/tokens {"name", "role", "expires": "90d"}:
// 201 with the token, shown this once.
func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name    string `json:"name"`
		Role    string `json:"role"`
		Expires string `json:"expires"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	role, err := auth.ParseRole(req.Role)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ttl, err := auth.ParseExpiry(req.Expires)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	id := identity(r)
	c, err := s.tokens.Create(r.Context(), req.Name, role, ttl, id.String())
	switch {
	case errors.Is(err, auth.ErrInvalid):
		writeError(w, http.StatusBadRequest, err.Error())
		return
	case errors.Is(err, db.ErrExists):
		writeError(w, http.StatusConflict, fmt.Sprintf("a token named %s exists; revoke it first (crystal-forge token revoke %s)", req.Name, req.Name))
		return
	case err != nil:
		s.internalError(w, r, err)
		return
	}
	expires := "never"
	if c.ExpiresAt != nil {
		expires = c.ExpiresAt.Format(time.RFC3339)
	}
	s.audit(r, "token-create", fmt.Sprintf("%s, role %s, expires %s", c.Name, c.Role, expires))
	writeJSON(w, http.StatusCreated, c)
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	err := s.tokens.Revoke(r.Context(), name)
	switch {
	case errors.Is(err, auth.ErrInvalid):
		writeError(w, http.StatusBadRequest, "Invalid token name")
		return
	case errors.Is(err, db.ErrNotFound):
		writeError(w, http.StatusNotFound, "Token not found")
		return
	case err != nil:
		s.internalError(w, r, err)
		return
	}
	s.audit(r, "token-revoke", name)
	writeJSON(w, http.StatusOK, map[string]string{"status": "revoked", "name": name})
}

// audit records an admin action that concerns no host.
func (s *Server) audit(r *http.Request, action, detail string) {
	id := identity(r)
	if err := s.db.Audit(r.Context(), &db.AuditEntry{Actor: id.String(), Action: action, Detail: detail, Remote: r.RemoteAddr, At: time.Now()}); err != nil {
		s.log.Error("audit log", "err", err)
	}
	s.log.Info("admin action", "actor", id.String(), "action", action, "detail", detail, "remote", r.RemoteAddr)
}
