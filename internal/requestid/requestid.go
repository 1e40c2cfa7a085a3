// Package requestid makes the ids that tie an error answer to its log line.
package requestid

import (
	"crypto/rand"
	"encoding/hex"
)

// Header is where servers send the id back.
const Header = "X-Request-Id"

// New returns a random id of 16 hex characters: short enough to read out,
// long enough not to repeat in a log.
func New() string {
	var b [8]byte
	// crypto/rand.Read never fails (it aborts the program instead).
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
