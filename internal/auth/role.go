// Package auth decides who a request comes from and what it may do:
// roles, identities (API tokens, tailnet logins, loopback), the token
// format, and the limiter for failed attempts.
package auth

import (
	"fmt"
	"strings"
)

// Role is what an identity may do. Roles are ordered: each allows what the
// ones before it allow.
type Role int

const (
	// RoleNone is an identity that may do nothing (a tailnet node no ACL
	// entry matches).
	RoleNone Role = iota
	// RoleRead reads the page, status, logs and history.
	RoleRead
	// RoleTrigger also triggers and cancels builds.
	RoleTrigger
	// RoleAdmin also changes the fleet and manages tokens: everything.
	RoleAdmin
)

var roleNames = [...]string{RoleNone: "none", RoleRead: "read", RoleTrigger: "trigger", RoleAdmin: "admin"}

// String returns the role's name.
func (r Role) String() string {
	if r < 0 || int(r) >= len(roleNames) {
		return fmt.Sprintf("Role(%d)", int(r))
	}
	return roleNames[r]
}

// Allows reports whether r includes need.
func (r Role) Allows(need Role) bool { return r >= need }

// ParseRole parses "read", "trigger" or "admin".
func ParseRole(s string) (Role, error) {
	switch strings.TrimSpace(s) {
	case "read":
		return RoleRead, nil
	case "trigger":
		return RoleTrigger, nil
	case "admin":
		return RoleAdmin, nil
	}
	return RoleNone, fmt.Errorf("role %q: want read, trigger or admin", s)
}

// MarshalText implements encoding.TextMarshaler.
func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (r *Role) UnmarshalText(b []byte) error {
	if string(b) == "none" {
		*r = RoleNone
		return nil
	}
	v, err := ParseRole(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}
