// Package client talks to a Crystal Forge server's API for the command
// line: trigger builds, read status, read and follow logs, and manage the
// fleet's hosts.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/crystal-forge/crystal-forge/internal/api"
	"github.com/crystal-forge/crystal-forge/internal/build"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/fleet"
)

// Client is an API client.
type Client struct {
	BaseURL string
	HTTP    *http.Client
	// Token, when set, is sent as Authorization: Bearer. Without one the
	// server identifies the client by its connection (loopback, tailnet).
	Token string
}

// New returns a client of the server at base (http://host:port).
func New(base string) *Client {
	return &Client{BaseURL: strings.TrimSuffix(base, "/"), HTTP: &http.Client{}}
}

// authorize adds the token, if any.
func (c *Client) authorize(req *http.Request) {
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
}

// ErrUnreachable wraps a request that got no answer from the server
// (connection refused, unknown host, network down).
var ErrUnreachable = errors.New("cannot reach the server")

// unreachable describes a failed round trip.
func (c *Client) unreachable(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%w at %s: %s: %w", ErrUnreachable, c.BaseURL, what, err)
}

// Error is a non-2xx answer.
type Error struct {
	Code   int
	Detail string
}

func (e *Error) Error() string { return fmt.Sprintf("server answered %d: %s", e.Code, e.Detail) }

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	return c.doJSON(ctx, method, path, nil, out)
}

// doJSON sends in (when not nil) as a JSON body and decodes the answer
// into out (when not nil).
func (c *Client) doJSON(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, body)
	if err != nil {
		return err
	}
	if in != nil || method != http.MethodGet {
		// The server wants JSON on state-changing requests (cross-site
		// forgery protection), body or not.
		req.Header.Set("Content-Type", "application/json")
	}
	c.authorize(req)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return c.unreachable(ctx, method+" "+path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e struct {
			Detail string `json:"detail"`
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(body, &e) != nil || e.Detail == "" {
			e.Detail = strings.TrimSpace(string(body))
		}
		return &Error{Code: resp.StatusCode, Detail: e.Detail}
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode: %w", method, path, err)
	}
	return nil
}

// TriggerResult is the answer to a trigger.
type TriggerResult struct {
	Status     string `json:"status"`
	Repository string `json:"repository"`
	BuildID    int64  `json:"build_id"`
}

// Trigger asks for a build of repo.
func (c *Client) Trigger(ctx context.Context, repo string) (*TriggerResult, error) {
	var r TriggerResult
	return &r, c.do(ctx, http.MethodPost, "/build/trigger/"+url.PathEscape(repo), &r)
}

// Status returns the spec status of repo.
func (c *Client) Status(ctx context.Context, repo string) (*build.Status, error) {
	var s build.Status
	return &s, c.do(ctx, http.MethodGet, "/build/status/"+url.PathEscape(repo), &s)
}

// Repositories lists every repository with its latest build.
func (c *Client) Repositories(ctx context.Context) ([]api.Repository, error) {
	var rs []api.Repository
	return rs, c.do(ctx, http.MethodGet, "/api/v1/repositories", &rs)
}

// Repository returns one repository with its latest build.
func (c *Client) Repository(ctx context.Context, repo string) (*api.Repository, error) {
	var r api.Repository
	return &r, c.do(ctx, http.MethodGet, "/api/v1/repositories/"+url.PathEscape(repo), &r)
}

// Build returns one build with its per-attribute results.
func (c *Client) Build(ctx context.Context, id int64) (*api.Build, error) {
	var b api.Build
	return &b, c.do(ctx, http.MethodGet, fmt.Sprintf("/api/v1/builds/%d", id), &b)
}

// Logs returns the last n lines of repo's newest log.
func (c *Client) Logs(ctx context.Context, repo string, n int) ([]string, error) {
	var r struct {
		Logs []string `json:"logs"`
	}
	return r.Logs, c.do(ctx, http.MethodGet, fmt.Sprintf("/build/logs/%s?lines=%d", url.PathEscape(repo), n), &r)
}

// Follow streams build id's log to w line by line until the build ends,
// and returns its final status.
func (c *Client) Follow(ctx context.Context, id int64, w io.Writer) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/api/v1/builds/%d/log?follow=1", c.BaseURL, id), nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", "text/event-stream")
	c.authorize(req)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return "", c.unreachable(ctx, fmt.Sprintf("follow build %d", id), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", &Error{Code: resp.StatusCode, Detail: resp.Status}
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	event := ""
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data := strings.TrimPrefix(line, "data: ")
			if event == "end" {
				return data, nil
			}
			if _, err := fmt.Fprintln(w, data); err != nil {
				return "", fmt.Errorf("follow build %d: write the log: %w", id, err)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("follow build %d: %w", id, err)
	}
	return "", fmt.Errorf("follow build %d: stream ended early", id)
}

// Hosts lists every fleet host with its state and alerts.
func (c *Client) Hosts(ctx context.Context) ([]*fleet.HostView, error) {
	var hs []*fleet.HostView
	return hs, c.do(ctx, http.MethodGet, "/api/v1/hosts", &hs)
}

// Host returns one host with its heartbeats, deployments, events and audit log.
func (c *Client) Host(ctx context.Context, name string) (*fleet.HostView, error) {
	var h fleet.HostView
	return &h, c.do(ctx, http.MethodGet, "/api/v1/hosts/"+url.PathEscape(name), &h)
}

// AddHost pre-registers a host with its agent's public key (approved).
func (c *Client) AddHost(ctx context.Context, name, publicKey string, p fleet.Policy) (*db.Host, error) {
	req := struct {
		Name      string `json:"name"`
		PublicKey string `json:"public_key"`
		fleet.Policy
	}{name, publicKey, p}
	var h db.Host
	return &h, c.doJSON(ctx, http.MethodPost, "/api/v1/hosts", req, &h)
}

// ApproveHost admits a host that enrolled on first contact.
func (c *Client) ApproveHost(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodPost, "/api/v1/hosts/"+url.PathEscape(name)+"/approve", nil)
}

// RemoveHost deletes a host and its history.
func (c *Client) RemoveHost(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/hosts/"+url.PathEscape(name), nil)
}

// RekeyHost gives a host a new agent key (approved).
func (c *Client) RekeyHost(ctx context.Context, name, publicKey string) error {
	return c.doJSON(ctx, http.MethodPost, "/api/v1/hosts/"+url.PathEscape(name)+"/key", map[string]string{"public_key": publicKey}, nil)
}

// SetTarget gives a host a manual target (its policy becomes manual).
func (c *Client) SetTarget(ctx context.Context, name, target string) error {
	return c.doJSON(ctx, http.MethodPost, "/api/v1/hosts/"+url.PathEscape(name)+"/target", map[string]string{"target": target}, nil)
}

// SetPolicy changes a host's policy.
func (c *Client) SetPolicy(ctx context.Context, name string, p fleet.Policy) error {
	return c.doJSON(ctx, http.MethodPost, "/api/v1/hosts/"+url.PathEscape(name)+"/policy", p, nil)
}

// Audit returns the newest admin actions, for one host or all (host "").
func (c *Client) Audit(ctx context.Context, host string, limit int) ([]*db.AuditEntry, error) {
	q := url.Values{}
	if host != "" {
		q.Set("host", host)
	}
	if limit > 0 {
		q.Set("limit", fmt.Sprint(limit))
	}
	var es []*db.AuditEntry
	return es, c.do(ctx, http.MethodGet, "/api/v1/audit?"+q.Encode(), &es)
}

// Tokens lists the server's API tokens (admin).
func (c *Client) Tokens(ctx context.Context) ([]*db.APIToken, error) {
	var ts []*db.APIToken
	return ts, c.do(ctx, http.MethodGet, "/api/v1/tokens", &ts)
}

// CreatedToken is a new token with its secret, shown once.
type CreatedToken struct {
	Token string `json:"token"`
	db.APIToken
}

// CreateToken makes a token; expires is "" (never) or a lifetime like "90d".
func (c *Client) CreateToken(ctx context.Context, name, role, expires string) (*CreatedToken, error) {
	var t CreatedToken
	return &t, c.doJSON(ctx, http.MethodPost, "/api/v1/tokens", map[string]string{"name": name, "role": role, "expires": expires}, &t)
}

// RevokeToken deletes a token.
func (c *Client) RevokeToken(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/tokens/"+url.PathEscape(name), nil)
}

// Whoami returns who the server takes this client for.
func (c *Client) Whoami(ctx context.Context) (*Whoami, error) {
	var w Whoami
	return &w, c.do(ctx, http.MethodGet, "/api/v1/whoami", &w)
}

// Whoami is GET /api/v1/whoami.
type Whoami struct {
	Identity string          `json:"identity"`
	Kind     string          `json:"kind"`
	Role     string          `json:"role"`
	Remote   string          `json:"remote"`
	Can      map[string]bool `json:"can"`
}
