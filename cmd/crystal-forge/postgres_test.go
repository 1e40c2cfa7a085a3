package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
	"github.com/crystal-forge/crystal-forge/internal/testsupport/pgtest"
)

// TestServerPostgres: `crystal-forge server --db postgres://…` keeps its
// state in PostgreSQL: a build is recorded there (no SQLite file is made),
// and a restarted server shows it.
func TestServerPostgres(t *testing.T) {
	testsupport.RequireNix(t)
	requireGit(t)
	dsn := pgtest.NewDatabase(t)
	repoDir := testsupport.NewGitRepo(t, map[string]string{"flake.nix": testsupport.Flake{
		System:   config.DefaultSystem(),
		Nonce:    testsupport.Nonce(),
		Packages: []testsupport.FlakePackage{testsupport.GoodPackage("hello", 0)},
	}.Nix()})
	srv := testsupport.StartServer(t, testsupport.ServerOptions{
		Repositories: []testsupport.ServerRepository{{Name: "app", URL: repoDir}},
		Args:         []string{"--db", dsn},
	})
	id := trigger(t, srv, "app")
	testsupport.WaitBuildSucceeded(t, srv, id)
	if code := srv.Stop(t, 30*time.Second); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d, want 0\nstderr:\n%s", code, srv.Stderr())
	}

	if _, err := os.Stat(filepath.Join(srv.Config.DataDir, "crystal-forge.db")); !os.IsNotExist(err) {
		t.Errorf("a server on PostgreSQL made a SQLite database (stat: %v)", err)
	}
	d, err := db.Open(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	b, err := d.LatestBuild(t.Context(), "app")
	if err != nil || b.ID != id || b.Status != db.StatusSuccess || b.Counts.Built != 2 {
		t.Errorf("build in PostgreSQL = %+v, %v; want build %d succeeded with its check and its package built", b, err, id)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	srv = testsupport.StartServerWithConfig(t, srv.Config)
	var builds []apiBuild
	srv.GetJSON(t, "/api/v1/repositories/app/builds", &builds)
	if len(builds) != 1 || builds[0].ID != id || builds[0].Status != db.StatusSuccess {
		t.Errorf("builds after a restart = %+v, want build %d, succeeded", builds, id)
	}
}
