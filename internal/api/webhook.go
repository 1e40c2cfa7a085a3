package api

import (
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/webhook"
)

const (
	maxWebhookBody = 4 << 20
	// keepDeliveries is how long a delivery id is remembered: providers
	// redeliver within hours, and a signed body replayed later than this
	// still only asks to build the branch's current head.
	keepDeliveries = 7 * 24 * time.Hour
	maxDeliveryID  = 200
)

// webhook is POST /api/v1/webhooks/{repository}: a push to the configured
// branch, signed with the repository's (or the server's) secret, triggers
// a build.
func (s *Server) webhook(w http.ResponseWriter, r *http.Request) {
	name := s.repository(w, r)
	if name == "" {
		return
	}
	repo, _ := s.orch.Repository(name)
	secret := repo.WebhookSecret
	if secret == "" {
		secret = s.cfg.WebhookSecret
	}
	if secret == "" {
		writeError(w, http.StatusForbidden, "No webhook secret is configured for this repository")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxWebhookBody+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, "cannot read body")
		return
	}
	if len(body) > maxWebhookBody {
		writeError(w, http.StatusRequestEntityTooLarge, "payload too large")
		return
	}
	ev, err := webhook.Verify(r.Header, body, secret)
	switch {
	case errors.Is(err, webhook.ErrBadSignature):
		s.log.Warn("webhook with a bad signature", "repository", name, "remote", r.RemoteAddr)
		writeError(w, http.StatusUnauthorized, err.Error())
		return
	case err != nil:
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	// A delivery seen before (a provider's redelivery, or a captured
	// request replayed) does nothing the second time.
	if ev.Delivery != "" {
		if len(ev.Delivery) > maxDeliveryID {
			writeError(w, http.StatusBadRequest, "delivery id too long")
			return
		}
		fresh, err := s.db.RecordDelivery(r.Context(), ev.Provider, ev.Delivery, name, time.Now(), keepDeliveries)
		if err != nil {
			s.internalError(w, r, err)
			return
		}
		if !fresh {
			s.log.Info("webhook delivery already processed", "repository", name, "provider", ev.Provider, "delivery", ev.Delivery)
			writeJSON(w, http.StatusOK, map[string]string{"status": "ignored", "reason": "delivery " + ev.Delivery + " already processed"})
			return
		}
	}
	if !ev.IsPush() {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ignored", "reason": "event " + ev.Kind})
		return
	}
	if ev.Branch() != repo.Branch {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ignored", "reason": "push to " + ev.Ref + ", building " + repo.Branch})
		return
	}
	b, created, err := s.orch.Trigger(r.Context(), name, "webhook:"+ev.Provider)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	status := "triggered"
	if !created {
		status = "already_running"
	}
	s.log.Info("webhook", "repository", name, "provider", ev.Provider, "commit", ev.After, "status", status)
	writeJSON(w, http.StatusOK, map[string]any{"status": status, "repository": name, "build_id": b.ID})
}
