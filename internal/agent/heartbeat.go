package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/fleetproto"
)

// maxReplySize bounds what the agent reads of the server's answer.
const maxReplySize = 1 << 20

// Errors of a heartbeat that callers tell apart.
var (
	// ErrPending: the server knows the host but an admin has not
	// approved it yet (403, status "pending").
	ErrPending = errors.New("host awaits approval")
	// ErrRefused: the server's 200 answer was not acted on, because it
	// is not signed by a trusted key or is not the answer to this
	// heartbeat.
	ErrRefused = errors.New("refusing reply")
)

// HeartbeatOnce sends one heartbeat and returns the server's verified
// reply, without acting on it.
func (a *Agent) HeartbeatOnce(ctx context.Context) (*fleetproto.Reply, error) {
	r, _, err := a.heartbeat(ctx)
	return r, err
}

// heartbeat sends one heartbeat, carrying the pending deployment report,
// and returns the verified reply and what was sent. The report is cleared
// once a verified reply shows the server took it.
func (a *Agent) heartbeat(ctx context.Context) (*fleetproto.Reply, *fleetproto.Heartbeat, error) {
	hb, err := a.newHeartbeat()
	if err != nil {
		return nil, nil, err
	}
	body, err := json.Marshal(hb)
	if err != nil {
		return nil, hb, fmt.Errorf("encode heartbeat: %w", err)
	}
	url := a.cfg.ServerURL + fleetproto.Path
	ctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, hb, fmt.Errorf("heartbeat to %s: %w", url, err)
	}
	req.Header.Set("Content-Type", "application/json")
	fleetproto.SignHeartbeat(req.Header, body, a.key)

	start := time.Now()
	resp, err := a.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, hb, fmt.Errorf("heartbeat to %s: %w", url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxReplySize+1))
	if err != nil {
		return nil, hb, fmt.Errorf("heartbeat to %s: read answer: %w", url, err)
	}
	if len(data) > maxReplySize {
		return nil, hb, fmt.Errorf("heartbeat to %s: answer is larger than %d bytes", url, maxReplySize)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, hb, answerError(resp, data)
	}

	reply, err := a.checkReply(resp.Header, data, hb)
	if errors.Is(err, fleetproto.ErrBadSignature) {
		err = fmt.Errorf("%w: the server key given to the agent (--server-key) is not the one this server signs with; "+
			"use the \"public_key\" of GET %s/info", err, a.cfg.ServerURL)
	}
	if err != nil {
		return nil, hb, fmt.Errorf("%w: %w (server %s)", ErrRefused, err, url)
	}
	a.log.Debug("heartbeat answered", "target", reply.Target, "deploy", reply.Deploy, "reason", reply.Reason,
		"status", reply.Status, "rtt", time.Since(start).Round(time.Millisecond))
	if hb.Deployment != nil {
		a.mu.Lock()
		if a.pending == hb.Deployment {
			a.pending = nil
		}
		a.mu.Unlock()
	}
	return reply, hb, nil
}

// newHeartbeat describes the host now.
func (a *Agent) newHeartbeat() (*fleetproto.Heartbeat, error) {
	facts := Facts(a.cfg.SysRoot)
	fp, err := Fingerprint(facts)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	pending := a.pending
	// The server accepts a heartbeat only if its timestamp is newer, in
	// milliseconds, than the last one's (replay protection), and a
	// deploy's report follows its heartbeat at once.
	ts := time.Now().UTC()
	if last := a.lastTimestamp.UnixMilli(); ts.UnixMilli() <= last {
		ts = time.UnixMilli(last + 1).UTC()
	}
	a.lastTimestamp = ts
	a.mu.Unlock()
	return &fleetproto.Heartbeat{
		Host:        a.cfg.Host,
		Current:     readLink(a.cfg.CurrentSystem),
		Fingerprint: fp,
		Facts:       facts,
		Timestamp:   ts,
		Nonce:       fleetproto.NewNonce(),
		Agent:       a.cfg.Version,
		DryRun:      a.cfg.DryRun,
		Deployment:  pending,
	}, nil
}

// checkReply accepts a reply only when a trusted server key signed these
// exact bytes and it answers this heartbeat: our nonce, our host.
func (a *Agent) checkReply(h http.Header, data []byte, hb *fleetproto.Heartbeat) (*fleetproto.Reply, error) {
	if err := fleetproto.VerifyReply(h, data, a.cfg.ServerKeys); err != nil {
		return nil, err
	}
	var r fleetproto.Reply
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("decode reply: %w", err)
	}
	if r.Nonce != hb.Nonce {
		return nil, fmt.Errorf("reply nonce %q is not this heartbeat's %q", r.Nonce, hb.Nonce)
	}
	if r.Host != hb.Host {
		return nil, fmt.Errorf("reply is for host %q, not %q", r.Host, hb.Host)
	}
	return &r, nil
}

// answerError describes a non-200 answer; 403 "pending" is ErrPending.
func answerError(resp *http.Response, data []byte) error {
	var body struct {
		Detail string `json:"detail"`
		Status string `json:"status"`
	}
	detail := ""
	if json.Unmarshal(data, &body) == nil {
		detail = body.Detail
	} else {
		detail = strings.TrimSpace(string(data))
		if len(detail) > 200 {
			detail = detail[:200] + "…"
		}
	}
	if resp.StatusCode == http.StatusForbidden && body.Status == "pending" {
		return fmt.Errorf("%w (server: %s)", ErrPending, detail)
	}
	return fmt.Errorf("heartbeat to %s: server answered %s: %s", resp.Request.URL, resp.Status, detail)
}
