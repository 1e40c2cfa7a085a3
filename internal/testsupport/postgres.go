package testsupport

import (
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/testsupport/pgtest"
)

// StartPostgres starts a PostgreSQL server of the test's own (see package
// pgtest, which internal/db's tests use directly: this package imports
// internal/db). Tests that only need a database use pgtest.NewDatabase.
func StartPostgres(t testing.TB) *pgtest.Server { return pgtest.Start(t) }
