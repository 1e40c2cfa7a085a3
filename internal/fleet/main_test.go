package fleet_test

import (
	"os"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/testsupport/pgtest"
)

// TestMain stops the PostgreSQL server some tests share after them.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
