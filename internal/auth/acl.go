package auth

import "strings"

// ACLEntry maps tailnet identities to a role: Match is a user login
// ("alice@example.com"), a node tag ("tag:ci") or "*" (every tailnet peer).
type ACLEntry struct {
	Match string
	Role  Role
}

// TailnetRole is the highest role any entry grants a peer with this login
// and these tags; RoleNone when none matches. A tagged node is identified
// by its tags, not by the user who tagged it (as in Tailscale's own ACLs).
func TailnetRole(acl []ACLEntry, login string, tags []string) Role {
	best := RoleNone
	for _, e := range acl {
		if e.Role <= best {
			continue
		}
		switch {
		case e.Match == "*":
			best = e.Role
		case strings.HasPrefix(e.Match, "tag:"):
			for _, t := range tags {
				if t == e.Match {
					best = e.Role
				}
			}
		case len(tags) == 0 && login != "" && strings.EqualFold(e.Match, login):
			best = e.Role
		}
	}
	return best
}
