package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/fleet"
)

const maxHeartbeat = 1 << 20

func (s *Server) registerFleet() {
	s.handle("POST /api/heartbeat", accessSigned, s.heartbeat)
	s.handle("GET /api/v1/hosts", accessRead, s.listHosts)
	s.handle("POST /api/v1/hosts", accessAdmin, s.addHost)
	s.handle("GET /api/v1/hosts/{host}", accessRead, s.getHost)
	s.handle("POST /api/v1/hosts/{host}/approve", accessAdmin, s.approveHost)
	s.handle("POST /api/v1/hosts/{host}/target", accessAdmin, s.setTarget)
	s.handle("POST /api/v1/hosts/{host}/policy", accessAdmin, s.setPolicy)
	s.handle("DELETE /api/v1/hosts/{host}", accessAdmin, s.removeHost)
	s.handle("POST /api/v1/hosts/{host}/key", accessAdmin, s.rekeyHost)
	s.handle("GET /api/v1/audit", accessRead, s.auditLog)
}

// heartbeat is the seed's POST /api/heartbeat.
func (s *Server) heartbeat(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxHeartbeat+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, "cannot read body")
		return
	}
	if len(body) > maxHeartbeat {
		writeError(w, http.StatusRequestEntityTooLarge, "heartbeat too large")
		return
	}
	out, hdr, err := s.cfg.Fleet.Heartbeat(r.Context(), r.Header, body, r.RemoteAddr)
	var rej *fleet.Rejection
	if errors.As(err, &rej) {
		if rej.Code != http.StatusForbidden {
			s.log.Warn("heartbeat refused", "remote", r.RemoteAddr, "code", rej.Code, "why", rej.Detail)
		}
		resp := map[string]string{"detail": rej.Detail}
		if rej.Pending {
			resp["status"] = db.HostPending
		}
		writeJSON(w, rej.Code, resp)
		return
	}
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	for k, v := range hdr {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(out)
}

// actor is who the audit log records: the identity the server
// established and the connection's address, never a client's claim.
func (s *Server) actor(r *http.Request) fleet.Actor {
	return fleet.Actor{Name: identity(r).String(), Remote: r.RemoteAddr}
}

// fleetError maps admin errors to status codes.
func (s *Server) fleetError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, fleet.ErrInvalid):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, db.ErrNotFound):
		writeError(w, http.StatusNotFound, "Host not found")
	case errors.Is(err, db.ErrExists):
		writeError(w, http.StatusConflict, "A host with this name or key exists")
	default:
		s.internalError(w, r, err)
	}
}

// hostParam validates {host}: 400 malformed, 404 unknown.
func (s *Server) hostParam(w http.ResponseWriter, r *http.Request) *db.Host {
	name := r.PathValue("host")
	if !fleet.ValidHostName(name) {
		writeError(w, http.StatusBadRequest, "Invalid host name")
		return nil
	}
	h, err := s.cfg.Fleet.DB().Host(r.Context(), name)
	if err != nil {
		s.fleetError(w, r, err)
		return nil
	}
	return h
}

func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "malformed JSON body: "+err.Error())
		return false
	}
	return true
}

func (s *Server) listHosts(w http.ResponseWriter, r *http.Request) {
	hosts, err := s.cfg.Fleet.DB().Hosts(r.Context())
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	out := make([]*fleet.HostView, 0, len(hosts))
	for _, h := range hosts {
		v, err := s.cfg.Fleet.View(r.Context(), h, false)
		if err != nil {
			s.internalError(w, r, err)
			return
		}
		out = append(out, v)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getHost(w http.ResponseWriter, r *http.Request) {
	h := s.hostParam(w, r)
	if h == nil {
		return
	}
	v, err := s.cfg.Fleet.View(r.Context(), h, true)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) addHost(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name      string `json:"name"`
		PublicKey string `json:"public_key"`
		fleet.Policy
	}
	if !decodeBody(w, r, &req) {
		return
	}
	if err := s.cfg.Fleet.AddHost(r.Context(), s.actor(r), req.Name, req.PublicKey, req.Policy); err != nil {
		s.fleetError(w, r, err)
		return
	}
	h, err := s.cfg.Fleet.DB().Host(r.Context(), req.Name)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, h)
}

func (s *Server) approveHost(w http.ResponseWriter, r *http.Request) {
	h := s.hostParam(w, r)
	if h == nil {
		return
	}
	if err := s.cfg.Fleet.Approve(r.Context(), s.actor(r), h.Name); err != nil {
		s.fleetError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": db.HostApproved, "host": h.Name})
}

func (s *Server) setTarget(w http.ResponseWriter, r *http.Request) {
	h := s.hostParam(w, r)
	if h == nil {
		return
	}
	var req struct {
		Target string `json:"target"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	if err := s.cfg.Fleet.SetTarget(r.Context(), s.actor(r), h.Name, req.Target); err != nil {
		s.fleetError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "host": h.Name, "policy": db.PolicyManual, "target": req.Target})
}

func (s *Server) setPolicy(w http.ResponseWriter, r *http.Request) {
	h := s.hostParam(w, r)
	if h == nil {
		return
	}
	var p fleet.Policy
	if !decodeBody(w, r, &p) {
		return
	}
	if err := s.cfg.Fleet.SetPolicy(r.Context(), s.actor(r), h.Name, p, ""); err != nil {
		s.fleetError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "host": h.Name, "policy": p})
}

func (s *Server) auditLog(w http.ResponseWriter, r *http.Request) {
	host := r.URL.Query().Get("host")
	if host != "" && !fleet.ValidHostName(host) {
		writeError(w, http.StatusBadRequest, "Invalid host name")
		return
	}
	limit, ok := intParam(r, "limit", 100, 1, 1000)
	if !ok {
		writeError(w, http.StatusBadRequest, "limit must be an integer from 1 to 1000")
		return
	}
	entries, err := s.cfg.Fleet.DB().AuditLog(r.Context(), host, limit)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, entries)
}

func (s *Server) removeHost(w http.ResponseWriter, r *http.Request) {
	h := s.hostParam(w, r)
	if h == nil {
		return
	}
	if err := s.cfg.Fleet.RemoveHost(r.Context(), s.actor(r), h.Name); err != nil {
		s.fleetError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "removed", "host": h.Name})
}

func (s *Server) rekeyHost(w http.ResponseWriter, r *http.Request) {
	h := s.hostParam(w, r)
	if h == nil {
		return
	}
	var req struct {
		PublicKey string `json:"public_key"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	if err := s.cfg.Fleet.Rekey(r.Context(), s.actor(r), h.Name, req.PublicKey); err != nil {
		s.fleetError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": db.HostApproved, "host": h.Name})
}
