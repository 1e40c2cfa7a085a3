package auth

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/db"
)

func TestRoles(t *testing.T) {
	for _, tc := range []struct {
		have, need Role
		ok         bool
	}{
		{RoleRead, RoleRead, true},
		{RoleRead, RoleTrigger, false},
		{RoleTrigger, RoleRead, true},
		{RoleTrigger, RoleAdmin, false},
		{RoleAdmin, RoleTrigger, true},
		{RoleNone, RoleRead, false},
	} {
		if got := tc.have.Allows(tc.need); got != tc.ok {
			t.Errorf("%s.Allows(%s) = %v, want %v", tc.have, tc.need, got, tc.ok)
		}
	}
	for _, s := range []string{"read", "trigger", "admin"} {
		r, err := ParseRole(s)
		if err != nil || r.String() != s {
			t.Errorf("ParseRole(%q) = %v, %v", s, r, err)
		}
	}
	for _, s := range []string{"", "none", "Admin", "root"} {
		if _, err := ParseRole(s); err == nil {
			t.Errorf("ParseRole(%q) accepted", s)
		}
	}
}

func TestIdentityString(t *testing.T) {
	for _, tc := range []struct {
		id   *Identity
		want string
	}{
		{nil, "anonymous"},
		{&Identity{Kind: KindLoopback, Name: "loopback"}, "loopback"},
		{&Identity{Kind: KindToken, Name: "ci"}, "token:ci"},
		{&Identity{Kind: KindTailnet, Name: "alice@example.com", Node: "laptop"}, "tailnet:alice@example.com (node laptop)"},
		{&Identity{Kind: KindTailnet, Tags: []string{"tag:ci"}, Node: "ci-1"}, "tailnet:tag:ci (node ci-1)"},
	} {
		if got := tc.id.String(); got != tc.want {
			t.Errorf("%+v.String() = %q, want %q", tc.id, got, tc.want)
		}
	}
	if id := FromContext(context.Background()); !id.Anonymous() {
		t.Errorf("FromContext(empty) = %+v, want anonymous", id)
	}
}

func TestTokenFormat(t *testing.T) {
	tok, id, hash, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ParseToken(tok); err != nil || got != id {
		t.Fatalf("ParseToken(%q) = %q, %v; want %q", tok, got, err, id)
	}
	if !TokenMatches(tok, hash) {
		t.Fatal("a token does not match its own hash")
	}
	other, _, _, _ := NewToken()
	if TokenMatches(other, hash) || other == tok {
		t.Fatal("two tokens match the same hash")
	}
	for _, bad := range []string{"", tok + "x", strings.TrimPrefix(tok, TokenPrefix), "cft_zzzzzzzzzzzz_" + strings.Repeat("a", 43)} {
		if _, err := ParseToken(bad); err == nil {
			t.Errorf("ParseToken(%q) accepted", bad)
		}
	}
}

func TestParseExpiry(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, true},
		{"never", 0, true},
		{"90d", 90 * 24 * time.Hour, true},
		{"12h", 12 * time.Hour, true},
		{"0d", 0, false},
		{"-1h", 0, false},
		{"soon", 0, false},
		{"99999d", 0, false},
	} {
		got, err := ParseExpiry(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseExpiry(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestTailnetRole(t *testing.T) {
	acl := []ACLEntry{
		{Match: "*", Role: RoleRead},
		{Match: "admin@example.com", Role: RoleAdmin},
		{Match: "tag:ci", Role: RoleTrigger},
	}
	for _, tc := range []struct {
		login string
		tags  []string
		want  Role
	}{
		{"member@example.com", nil, RoleRead},
		{"Admin@Example.com", nil, RoleAdmin},
		{"admin@example.com", []string{"tag:ci"}, RoleTrigger}, // a tagged node is its tags
		{"tagged-devices", []string{"tag:ci"}, RoleTrigger},
	} {
		if got := TailnetRole(acl, tc.login, tc.tags); got != tc.want {
			t.Errorf("TailnetRole(%q, %v) = %s, want %s", tc.login, tc.tags, got, tc.want)
		}
	}
	if got := TailnetRole(acl[1:], "member@example.com", nil); got != RoleNone {
		t.Errorf("without '*': %s, want none", got)
	}
}

func TestLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := NewLimiter(3, time.Minute)
	l.Now = func() time.Time { return now }
	for i := range 3 {
		if b, _ := l.Blocked("a"); b {
			t.Fatalf("blocked after %d failures", i)
		}
		l.Fail("a")
	}
	if b, wait := l.Blocked("a"); !b || wait != time.Minute {
		t.Fatalf("after 3 failures: blocked=%v wait=%v, want blocked for 1m", b, wait)
	}
	if b, _ := l.Blocked("b"); b {
		t.Fatal("another address is blocked too")
	}
	now = now.Add(time.Minute)
	if b, _ := l.Blocked("a"); b {
		t.Fatal("still blocked after the window")
	}
	l.MaxAddrs = 2
	l.Fail("x")
	l.Fail("y")
	l.Fail("z")
	if n := len(l.addrs); n > 2 {
		t.Fatalf("limiter tracks %d addresses, bound is 2", n)
	}
}

func openDB(t *testing.T) *db.DB {
	t.Helper()
	d, err := db.Open(t.Context(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("close database: %v", err)
		}
	})
	return d
}

func TestTokens(t *testing.T) {
	ctx := t.Context()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ts := &Tokens{DB: openDB(t), Now: func() time.Time { return now }}

	ci, err := ts.Create(ctx, "ci", RoleTrigger, 24*time.Hour, "loopback")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Create(ctx, "ci", RoleAdmin, 0, "loopback"); !errors.Is(err, db.ErrExists) {
		t.Fatalf("second token named ci: %v, want ErrExists", err)
	}
	for _, bad := range []struct {
		name string
		role Role
	}{{"", RoleRead}, {"a b", RoleRead}, {"x", RoleNone}} {
		if _, err := ts.Create(ctx, bad.name, bad.role, 0, ""); !errors.Is(err, ErrInvalid) {
			t.Errorf("Create(%q, %s) = %v, want ErrInvalid", bad.name, bad.role, err)
		}
	}

	id, err := ts.Authenticate(ctx, ci.Token, "192.0.2.1:5")
	if err != nil || id.Kind != KindToken || id.Name != "ci" || id.Role != RoleTrigger || id.Remote != "192.0.2.1:5" {
		t.Fatalf("Authenticate = %+v, %v", id, err)
	}
	list, err := ts.List(ctx)
	if err != nil || len(list) != 1 || list[0].LastUsedAt == nil || !list[0].LastUsedAt.Equal(now) {
		t.Fatalf("List = %+v, %v; want ci used at %v", list, err, now)
	}
	if list[0].Hash == "" || strings.Contains(list[0].Hash, ci.Token) {
		t.Fatal("stored hash is empty or holds the token")
	}

	// A token of the right shape whose secret differs, one that is not a
	// token at all, and the right one after expiry.
	forged := ci.Token[:len(ci.Token)-4] + "AAAA"
	if forged == ci.Token {
		forged = ci.Token[:len(ci.Token)-4] + "BBBB"
	}
	for _, tc := range []struct {
		tok  string
		want error
	}{{forged, ErrUnknownToken}, {"hunter2", ErrUnknownToken}} {
		if _, err := ts.Authenticate(ctx, tc.tok, ""); !errors.Is(err, tc.want) {
			t.Errorf("Authenticate(%q) = %v, want %v", tc.tok, err, tc.want)
		}
	}
	now = now.Add(24 * time.Hour)
	if _, err := ts.Authenticate(ctx, ci.Token, ""); !errors.Is(err, ErrExpiredToken) {
		t.Fatalf("expired token: %v", err)
	}

	admin, err := ts.Create(ctx, "ops", RoleAdmin, 0, "loopback")
	if err != nil || admin.ExpiresAt != nil {
		t.Fatalf("token without expiry: %+v, %v", admin, err)
	}
	if err := ts.Revoke(ctx, "ops"); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Authenticate(ctx, admin.Token, ""); !errors.Is(err, ErrUnknownToken) {
		t.Fatalf("revoked token: %v", err)
	}
	if err := ts.Revoke(ctx, "ops"); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("revoking twice: %v", err)
	}
}

func TestAuthenticateUpload(t *testing.T) {
	ctx := t.Context()
	now := time.Now()
	ts := &Tokens{DB: openDB(t), Now: func() time.Time { return now }}
	mk := func(name string, role Role, ttl time.Duration) string {
		c, err := ts.Create(ctx, name, role, ttl, "test")
		if err != nil {
			t.Fatal(err)
		}
		return c.Token
	}
	ci, reader, admin, old := mk("ci", RoleTrigger, 0), mk("reader", RoleRead, 0), mk("ops", RoleAdmin, 0), mk("old", RoleTrigger, time.Hour)
	now = now.Add(2 * time.Hour)
	for _, tc := range []struct {
		token, name string
		ok          bool
	}{
		{ci, "token:ci", true},
		{admin, "token:ops", true},
		{reader, "token:reader", false},
		{old, "", false},
		{"tok-123", "", false},
		{"", "", false},
	} {
		name, ok, err := ts.AuthenticateUpload(ctx, tc.token)
		if err != nil || ok != tc.ok || name != tc.name {
			t.Errorf("AuthenticateUpload(%.12q) = %q, %v, %v; want %q, %v", tc.token, name, ok, err, tc.name, tc.ok)
		}
	}
}
