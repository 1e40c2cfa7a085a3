package testsupport

import (
	"io"
	"testing"
)

// CloseAtCleanup closes c when the test ends and fails the test if that
// fails: a database or store that cannot close cleanly (a connection still
// in use, a write not flushed) is a bug the test should report.
func CloseAtCleanup(t testing.TB, c io.Closer) {
	t.Helper()
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close %T: %v", c, err)
		}
	})
}
