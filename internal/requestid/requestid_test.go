package requestid

import (
	"regexp"
	"testing"
)

func TestNew(t *testing.T) {
	valid := regexp.MustCompile(`^[0-9a-f]{16}$`)
	seen := map[string]bool{}
	for range 1000 {
		id := New()
		if !valid.MatchString(id) {
			t.Fatalf("id %q is not 16 hex characters", id)
		}
		if seen[id] {
			t.Fatalf("id %q repeated", id)
		}
		seen[id] = true
	}
}
