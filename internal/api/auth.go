package api

import (
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/auth"
)

// AuthConfig says who may do what (docs/security.md).
type AuthConfig struct {
	// RequireAuthForRead makes reading need an identity with role read;
	// by default reading is open, as in the spec.
	RequireAuthForRead bool
	// DistrustLoopback is trust_loopback = false: connections from
	// 127.0.0.1 and ::1 are not admin.
	DistrustLoopback bool
	// AllowedHosts are the names the Host header may carry (DNS
	// rebinding); IP addresses are always allowed. "*" turns the check off.
	// Empty allows localhost only.
	AllowedHosts []string
	// Tailnet identifies peers that arrive over Tailscale; nil when the
	// server is not on a tailnet.
	Tailnet auth.PeerResolver
	// ACL maps tailnet logins and tags to roles.
	ACL []auth.ACLEntry
	// FailLimit and FailWindow bound failed token attempts per source
	// address (default 10 per minute).
	FailLimit  int
	FailWindow time.Duration
}

// forwardingHeaders mark a request relayed by a proxy: its socket address
// is the proxy's, not the client's.
var forwardingHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Real-Ip", "X-Forwarded-Host"}

// access is what a route needs.
type access int

const (
	// accessSigned routes carry their own proof (a signed heartbeat, a
	// webhook's HMAC): no identity, no browser checks, any Host.
	accessSigned access = iota
	// accessPublic routes (the page's HTML, its script, /health, whoami)
	// need no identity but do check Host.
	accessPublic
	accessRead
	accessTrigger
	accessAdmin
)

func (a access) role() auth.Role {
	switch a {
	case accessTrigger:
		return auth.RoleTrigger
	case accessAdmin:
		return auth.RoleAdmin
	}
	return auth.RoleRead
}

// handle registers h for pattern behind the access checks.
func (s *Server) handle(pattern string, a access, h http.HandlerFunc) {
	s.mux.Handle(pattern, s.guard(a, h))
}

func (s *Server) guard(a access, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a == accessSigned {
			h.ServeHTTP(w, r)
			return
		}
		if !s.hostAllowed(r.Host) {
			s.log.Warn("request for a foreign Host refused", "host", truncate(r.Host, 100), "remote", r.RemoteAddr, "path", r.URL.Path)
			writeError(w, http.StatusMisdirectedRequest, fmt.Sprintf("Host %q is not one of this server's names; add it to allowed_hosts", truncate(r.Host, 100)))
			return
		}
		if !safeMethod(r.Method) {
			if detail := crossSite(r); detail != "" {
				s.log.Warn("cross-site request refused", "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "why", detail)
				writeError(w, http.StatusForbidden, detail)
				return
			}
		}
		id, code, detail := s.identify(r)
		if code != 0 {
			if code == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="crystal-forge"`)
			}
			writeError(w, code, detail)
			return
		}
		if a >= accessRead && (a > accessRead || s.cfg.Auth.RequireAuthForRead) {
			need := a.role()
			if id.Anonymous() {
				w.Header().Set("WWW-Authenticate", `Bearer realm="crystal-forge"`)
				writeError(w, http.StatusUnauthorized, fmt.Sprintf("This needs the %s role: send Authorization: Bearer <token> (crystal-forge token create), or come over the tailnet", need))
				return
			}
			if !id.Role.Allows(need) {
				s.log.Warn("request refused", "identity", id.String(), "role", id.Role, "need", need, "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
				writeError(w, http.StatusForbidden, fmt.Sprintf("%s has role %s; this needs %s", id, id.Role, need))
				return
			}
		}
		h.ServeHTTP(w, r.WithContext(auth.WithIdentity(r.Context(), id)))
	})
}

func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// identify establishes who sent r: a bearer token, a tailnet peer, or a
// trusted loopback connection; otherwise anonymous. A non-zero code is a
// refusal (a bad token, too many of them).
func (s *Server) identify(r *http.Request) (*auth.Identity, int, string) {
	ip := remoteIP(r.RemoteAddr)
	if h := r.Header.Get("Authorization"); h != "" {
		if blocked, wait := s.failures.Blocked(ip.String()); blocked {
			return nil, http.StatusTooManyRequests, fmt.Sprintf("too many failed attempts from %s; try again in %s", ip, wait.Round(time.Second))
		}
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok {
			s.failures.Fail(ip.String())
			return nil, http.StatusUnauthorized, "Authorization must be \"Bearer <token>\""
		}
		id, err := s.tokens.Authenticate(r.Context(), strings.TrimSpace(tok), r.RemoteAddr)
		switch {
		case errors.Is(err, auth.ErrUnknownToken):
			s.failures.Fail(ip.String())
			s.log.Warn("request with an unknown token", "remote", r.RemoteAddr, "path", r.URL.Path)
			return nil, http.StatusUnauthorized, "unknown or revoked token"
		case errors.Is(err, auth.ErrExpiredToken):
			s.failures.Fail(ip.String())
			return nil, http.StatusUnauthorized, "token expired: create a new one (crystal-forge token create)"
		case err != nil:
			s.log.Error("authenticate token", "err", err)
			return nil, http.StatusInternalServerError, "cannot check the token: " + err.Error()
		}
		return id, 0, ""
	}
	if s.cfg.Auth.Tailnet != nil {
		peer, err := s.cfg.Auth.Tailnet.Peer(r.Context(), r.RemoteAddr)
		if err != nil {
			s.log.Error("tailnet whois", "remote", r.RemoteAddr, "err", err)
			return nil, http.StatusInternalServerError, "cannot identify the tailnet peer: " + err.Error()
		}
		if peer != nil {
			return &auth.Identity{Kind: auth.KindTailnet, Name: peer.Login, Node: peer.Node, Tags: peer.Tags,
				Role: auth.TailnetRole(s.cfg.Auth.ACL, peer.Login, peer.Tags), Remote: r.RemoteAddr}, 0, ""
		}
	}
	if ip.IsLoopback() && !s.cfg.Auth.DistrustLoopback && !proxied(r) {
		return &auth.Identity{Kind: auth.KindLoopback, Name: "loopback", Role: auth.RoleAdmin, Remote: r.RemoteAddr}, 0, ""
	}
	return &auth.Identity{Kind: auth.KindAnonymous, Remote: r.RemoteAddr}, 0, ""
}

// proxied reports whether r says it was relayed: then its loopback source
// is a proxy on this machine, not an operator, and earns no trust.
func proxied(r *http.Request) bool {
	return slices.ContainsFunc(forwardingHeaders, func(h string) bool { return r.Header.Get(h) != "" })
}

func remoteIP(addr string) netip.Addr {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// hostAllowed checks Host against the server's names: a page on another
// name that resolves here (DNS rebinding) is refused. IP literals cannot
// be rebound, so they pass.
func (s *Server) hostAllowed(host string) bool {
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	}
	name = strings.TrimSuffix(strings.Trim(name, "[]"), ".")
	if _, err := netip.ParseAddr(name); err == nil {
		return true
	}
	if strings.EqualFold(name, "localhost") {
		return true
	}
	for _, a := range s.cfg.Auth.AllowedHosts {
		if a == "*" || strings.EqualFold(strings.TrimSuffix(a, "."), name) {
			return true
		}
	}
	return false
}

// crossSite returns why a state-changing request looks browser-forged, or
// "". A browser sends Origin with every cross-origin POST; it cannot send
// Authorization or a JSON content type cross-site without a CORS
// preflight, which this server never grants. A request with no body and
// none of a browser's headers (the spec's `curl -X POST`) passes.
func crossSite(r *http.Request) string {
	if o := r.Header.Get("Origin"); o != "" {
		if !sameOrigin(o, r.Host) {
			return fmt.Sprintf("cross-origin request from %s refused", truncate(o, 100))
		}
	}
	if r.Header.Get("Authorization") != "" {
		return ""
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err == nil && mt == "application/json" {
		return ""
	}
	browser := r.Header.Get("Origin") != "" || r.Header.Get("Sec-Fetch-Site") != "" || r.Header.Get("Sec-Fetch-Mode") != ""
	if !browser && r.ContentLength == 0 && r.Header.Get("Content-Type") == "" {
		return ""
	}
	return "state-changing requests need Content-Type: application/json or an Authorization header"
}

// sameOrigin compares an Origin header's host and port with Host.
func sameOrigin(origin, host string) bool {
	scheme, rest, ok := strings.Cut(origin, "://")
	if !ok || (scheme != "http" && scheme != "https") {
		return false // includes "null"
	}
	return strings.EqualFold(strings.TrimSuffix(rest, "/"), host) || strings.EqualFold(withDefaultPort(rest, scheme), withDefaultPort(host, scheme))
}

func withDefaultPort(hostport, scheme string) string {
	if _, _, err := net.SplitHostPort(hostport); err == nil {
		return hostport
	}
	port := 80
	if scheme == "https" {
		port = 443
	}
	return net.JoinHostPort(strings.Trim(hostport, "[]"), strconv.Itoa(port))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// identity is the request's identity (set by guard).
func identity(r *http.Request) *auth.Identity { return auth.FromContext(r.Context()) }

// who names who did something, for log lines.
func who(r *http.Request) slog.Attr { return slog.String("identity", identity(r).String()) }
