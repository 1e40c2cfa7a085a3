package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/api"
	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
	"github.com/crystal-forge/crystal-forge/internal/testsupport/pgtest"
	"github.com/crystal-forge/crystal-forge/internal/testsupport/testenv"
)

func TestMain(m *testing.M) {
	code := pgtest.Main(m)
	if err := testsupport.RemoveCrystalForgeBinary(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = max(code, 1)
	}
	os.Exit(code)
}

// requireGit skips the test when git is not installed.
func requireGit(t *testing.T) {
	t.Helper()
	testenv.LookPath(t, "`make test` installs git", "git")
}

// TestServerConfigErrors checks that `crystal-forge server` refuses a bad
// configuration with exit code 1 and a message that names the bad key,
// before it creates anything.
func TestServerConfigErrors(t *testing.T) {
	tests := []struct {
		name    string
		toml    string
		env     map[string]string
		wantErr []string
	}{
		{
			name: "duplicate repository name",
			toml: "[[repositories]]\nname = \"dup\"\nurl = \"/srv/git/a\"\nbranch = \"main\"\n\n" +
				"[[repositories]]\nname = \"dup\"\nurl = \"/srv/git/b\"\nbranch = \"main\"\n",
			wantErr: []string{"repositories[1].name", `"dup" is used twice`},
		},
		{
			name:    "unknown top-level key",
			toml:    "max_paralel_builds = 3\n",
			wantErr: []string{"unknown key", "max_paralel_builds"},
		},
		{
			name:    "unknown repository key",
			toml:    "[[repositories]]\nname = \"a\"\nurl = \"/srv/git/a\"\nbranch = \"main\"\ncolour = \"blue\"\n",
			wantErr: []string{"unknown key", "repositories.colour"},
		},
		{
			name:    "bad repository URL",
			toml:    "[[repositories]]\nname = \"a\"\nurl = \"--upload-pack=evil\"\nbranch = \"main\"\n",
			wantErr: []string{"repositories[0].url", "must not start with '-'"},
		},
		{
			name:    "poll interval too short",
			toml:    "poll_interval = \"10ms\"\n",
			wantErr: []string{"poll_interval"},
		},
		{
			name:    "not TOML",
			toml:    "api_port = = 1\n",
			wantErr: []string{"crystal-forge.toml"},
		},
		{
			name:    "bad port in the environment",
			toml:    "",
			env:     map[string]string{"BUILD_SERVER_API_PORT": "http"},
			wantErr: []string{"BUILD_SERVER_API_PORT", "not a port number"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			dataDir := filepath.Join(dir, "data")
			file := filepath.Join(dir, "crystal-forge.toml")
			// Valid settings first, so only the case's mistake is wrong.
			text := "data_dir = \"" + dataDir + "\"\nkey_file = \"" + filepath.Join(dataDir, "key") + "\"\n" + tt.toml
			if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"BUILD_SERVER_API_PORT", "BUILD_SERVER_CACHE_PORT", "BUILD_SERVER_HOSTNAME", "BUILD_SERVER_DATA_DIR", "ENABLE_WEB_UI"} {
				t.Setenv(k, tt.env[k])
			}
			var stdout, stderr bytes.Buffer
			code := run(t.Context(), []string{"server", "--config", file}, &stdout, &stderr)
			if code != 1 {
				t.Errorf("exit code %d, want 1\nstderr:\n%s", code, &stderr)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr does not name %q:\n%s", want, &stderr)
				}
			}
			if stdout.Len() > 0 {
				t.Errorf("stdout = %q, want nothing (no key was made)", &stdout)
			}
			if _, err := os.Stat(dataDir); err == nil {
				t.Errorf("the data directory %s was created for a bad configuration", dataDir)
			}
		})
	}
}

// TestServerPortInUse: a port taken by another program stops the server
// with exit code 1 and a message naming the setting, before it creates the
// data directory or a signing key.
func TestServerPortInUse(t *testing.T) {
	for _, key := range []string{"api_port", "cache_port"} {
		t.Run(key, func(t *testing.T) {
			busy := holdPort(t)
			_, port, _ := net.SplitHostPort(busy)
			other := "cache_port"
			if key == other {
				other = "api_port"
			}
			dir := t.TempDir()
			dataDir := filepath.Join(dir, "data")
			keyFile := filepath.Join(dir, "key")
			file := filepath.Join(dir, "crystal-forge.toml")
			text := fmt.Sprintf("data_dir = %q\nkey_file = %q\nbind = \"127.0.0.1\"\n%s = %s\n%s = %s\n",
				dataDir, keyFile, key, port, other, freePort(t))
			if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"BUILD_SERVER_API_PORT", "BUILD_SERVER_CACHE_PORT", "BUILD_SERVER_DATA_DIR"} {
				t.Setenv(k, "")
			}
			var stdout, stderr bytes.Buffer
			code := run(t.Context(), []string{"server", "--config", file}, &stdout, &stderr)
			if code != 1 {
				t.Errorf("exit code %d, want 1\nstderr:\n%s", code, &stderr)
			}
			for _, want := range []string{"listen on " + busy, "already in use", "set " + key} {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr does not contain %q:\n%s", want, &stderr)
				}
			}
			if stdout.Len() > 0 {
				t.Errorf("stdout = %q, want nothing (no key was made)", &stdout)
			}
			for _, p := range []string{keyFile, dataDir} {
				if _, err := os.Stat(p); err == nil {
					t.Errorf("%s was created by a server that could not bind its port", p)
				}
			}
		})
	}
}

// buildStatus is the spec's /build/status document.
type buildStatus struct {
	IsRunning  bool    `json:"is_running"`
	LastStart  *string `json:"last_start"`
	LastFinish *string `json:"last_finish"`
	LastStatus *string `json:"last_status"`
	LastCommit *string `json:"last_commit"`
	Repository string  `json:"repository"`
}

type apiBuild struct {
	ID          int64  `json:"id"`
	Repository  string `json:"repository"`
	Status      string `json:"status"`
	ShortCommit string `json:"short_commit"`
	Error       string `json:"error"`
}

func str(p *string) string {
	if p == nil {
		return "<null>"
	}
	return *p
}

func logLines(t *testing.T, srv *testsupport.Server, repo string) []string {
	t.Helper()
	var logs struct {
		Logs []string `json:"logs"`
	}
	srv.GetJSON(t, "/build/logs/"+repo+"?lines=1000", &logs)
	return logs.Logs
}

func trigger(t *testing.T, srv *testsupport.Server, repo string) int64 {
	t.Helper()
	code, body := srv.Post(t, "/build/trigger/"+repo)
	var r struct {
		Status  string `json:"status"`
		BuildID int64  `json:"build_id"`
	}
	if err := json.Unmarshal(body, &r); code != http.StatusOK || err != nil || r.Status != "triggered" {
		t.Fatalf("POST /build/trigger/%s: %d %s, want 200 triggered", repo, code, body)
	}
	return r.BuildID
}

// startBlockedServer starts a real server with one repository, name, whose
// only package, "slow", blocks until the test releases it.
func startBlockedServer(t *testing.T, name string) (blocker *testsupport.Blocker, srv *testsupport.Server, repoDir string) {
	t.Helper()
	blocker = testsupport.NewBlocker(t, "slow")
	repoDir = testsupport.NewGitRepo(t, map[string]string{"flake.nix": testsupport.Flake{
		System:   config.DefaultSystem(),
		Nonce:    testsupport.Nonce(),
		Packages: []testsupport.FlakePackage{blocker.Package()},
	}.Nix()})
	srv = testsupport.StartServer(t, testsupport.ServerOptions{
		Repositories: []testsupport.ServerRepository{{Name: name, URL: repoDir, Branch: "main"}},
	})
	return blocker, srv, repoDir
}

// TestServerKillAndRestart kills a real server with SIGKILL (and every
// process it started) in the middle of a build, starts a new one on the
// same data directory, and checks that the dead build is recorded as
// failed ("interrupted") everywhere and that building works again.
func TestServerKillAndRestart(t *testing.T) {
	testsupport.RequireNix(t)
	requireGit(t)
	const name = "blocky"
	blocker, srv, repoDir := startBlockedServer(t, name)

	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(srv.Config.DataDir, "logs", name+".log"))
			t.Logf("last build log of %s:\n%s", name, b)
		}
	})

	t.Logf("server up")
	first := trigger(t, srv, name)
	testsupport.WaitBuild(t, srv, first, "it to run and reach its package", func(b api.Build) bool {
		return b.Status == db.StatusRunning && strings.Contains(srv.Log(t, first), "Building package slow")
	})
	builder := blocker.WaitStarted(t, srv, first)
	t.Logf("builder running (pid %d); killing the server", builder)

	srv.Kill(t)
	if code, err := srv.Wait(0); err != nil || code != -1 {
		t.Errorf("killed server: exit code %d (%v), want -1 (signal)", code, err)
	}
	if testsupport.ProcessAlive(builder) {
		t.Errorf("the nix builder (pid %d) survived the kill of the server's process tree", builder)
	}

	srv = testsupport.StartServerWithConfig(t, srv.Config)
	t.Logf("server restarted")
	var st buildStatus
	srv.GetJSON(t, "/build/status/"+name, &st)
	if st.IsRunning || str(st.LastStatus) != "failed" || st.LastFinish == nil {
		t.Errorf("status after restart = running %v, last_status %s, last_finish %s; want not running, failed, a time",
			st.IsRunning, str(st.LastStatus), str(st.LastFinish))
	}
	var builds []apiBuild
	srv.GetJSON(t, "/api/v1/repositories/"+name+"/builds", &builds)
	if len(builds) != 1 || builds[0].ID != first || builds[0].Status != "failed" || builds[0].Error != "interrupted" {
		t.Errorf("builds after restart = %+v, want build %d failed with error \"interrupted\"", builds, first)
	}
	lines := logLines(t, srv, name)
	if len(lines) == 0 || !strings.Contains(lines[len(lines)-1], "interrupted") {
		t.Errorf("log after restart ends %q, want a line saying the build was interrupted", lines[max(0, len(lines)-3):])
	}
	// The status file tools read says the same.
	var file buildStatus
	if b, err := os.ReadFile(filepath.Join(srv.Config.DataDir, "status", name+".json")); err != nil {
		t.Error(err)
	} else if err := json.Unmarshal(b, &file); err != nil || file.IsRunning || str(file.LastStatus) != "failed" {
		t.Errorf("status file after restart = %s (%v), want not running and failed", b, err)
	}

	// Building works again.
	if err := os.Remove(blocker.PIDFile()); err != nil {
		t.Fatal(err)
	}
	second := trigger(t, srv, name)
	if second == first {
		t.Fatalf("new build has the id %d of the interrupted one", second)
	}
	blocker.WaitStarted(t, srv, second)
	srv.GetJSON(t, "/build/status/"+name, &st)
	if !st.IsRunning {
		t.Errorf("status while the new build runs: is_running false")
	}
	t.Logf("new build running; releasing it")
	blocker.Release(t)
	testsupport.WaitBuildSucceeded(t, srv, second)
	srv.GetJSON(t, "/build/status/"+name, &st)
	if short := testsupport.ShortHead(t, repoDir); str(st.LastStatus) != "success" || str(st.LastCommit) != short {
		t.Errorf("status after the new build = %s at %s, want success at %s\nlog:\n%s",
			str(st.LastStatus), str(st.LastCommit), short, strings.Join(logLines(t, srv, name), "\n"))
	}
	srv.GetJSON(t, "/api/v1/repositories/"+name+"/builds", &builds)
	if len(builds) != 2 || builds[0].ID != second || builds[0].Status != "success" || builds[1].Status != "failed" {
		t.Errorf("builds = %+v, want the new build succeeded, the old one failed", builds)
	}

	// A graceful stop of an idle server exits 0.
	if code := srv.Stop(t, 30*time.Second); code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0\nstderr:\n%s", code, srv.Stderr())
	}
}

// TestServerCrashStopsBuilders kills only the server process with SIGKILL
// (no cleanup can run) in the middle of a build and checks that the nix
// command it started and nix's builder end on their own, and that a build
// of the same package after a restart runs and finishes instead of waiting
// on a lock the orphans hold.
func TestServerCrashStopsBuilders(t *testing.T) {
	testsupport.RequireNix(t)
	requireGit(t)
	const name = "crashy"
	blocker, srv, _ := startBlockedServer(t, name)
	builder := blocker.WaitStarted(t, srv, trigger(t, srv, name))
	nixPID, err := testsupport.ProcessParent(builder)
	if err != nil {
		t.Fatal(err)
	}
	nixCmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", nixPID))
	if !strings.HasPrefix(string(nixCmd), "nix\x00") {
		t.Fatalf("parent of the builder (pid %d) is %q, want the server's nix build", nixPID, nixCmd)
	}
	t.Logf("builder %d under nix %d; kill -9 of the server (pid %d) alone", builder, nixPID, srv.Cmd.Process.Pid)
	srv.Crash(t)
	testsupport.WaitUntil(t, "the server's nix build to end", func() bool { return !testsupport.ProcessAlive(nixPID) })
	testsupport.WaitUntil(t, "nix's builder to end", func() bool { return !testsupport.ProcessAlive(builder) })

	srv = testsupport.StartServerWithConfig(t, srv.Config)
	if err := os.Remove(blocker.PIDFile()); err != nil {
		t.Fatal(err)
	}
	blocker.WaitStarted(t, srv, trigger(t, srv, name))
	blocker.Release(t)
	var st buildStatus
	testsupport.WaitUntil(t, "the build after the restart to finish", func() bool {
		srv.GetJSON(t, "/build/status/"+name, &st)
		return !st.IsRunning
	})
	if str(st.LastStatus) != "success" {
		t.Errorf("build after the restart: %s, want success\nlog:\n%s", str(st.LastStatus), strings.Join(logLines(t, srv, name), "\n"))
	}
}
