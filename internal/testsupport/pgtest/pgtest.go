// Package pgtest starts real PostgreSQL servers for tests: initdb in a
// temporary directory (as the unprivileged user nobody when the test runs
// as root, since initdb refuses root), the server listening only on a unix
// socket in that directory, in a process group of its own so that stopping
// it stops every process it started; the directory is removed afterwards.
//
// A test binary shares one server, started on first use, and gives each
// test a fresh database (NewDatabase); its TestMain calls Main, which stops
// the server after the tests. Start gives a test a server of its own.
//
// It imports nothing of the project but testenv, so internal/db's own
// tests can use it (internal/testsupport imports internal/db).
package pgtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"

	"github.com/crystal-forge/crystal-forge/internal/testsupport/testenv"
)

// binDir is where Debian's postgresql-15 package puts its programs.
const binDir = "/usr/lib/postgresql/15/bin"

// stopGrace is how long Stop waits after SIGTERM before SIGKILL.
const stopGrace = 10 * time.Second

// port names the socket file (.s.PGSQL.<port>); the directory is the
// server's own, so the number cannot collide with another server.
const port = 5432

// superuser is the role initdb creates and tests connect as (trust auth,
// socket only: nobody else on the machine can reach the socket directory).
const superuser = "postgres"

// errMissing marks a PostgreSQL that is not installed, as opposed to one
// that failed to start.
var errMissing = errors.New("PostgreSQL is not installed (initdb not found in " + binDir + ", /usr/lib/postgresql/*/bin or on PATH); `make test` (scripts/install-deps.sh) installs postgresql-15")

// Server is a running PostgreSQL server.
type Server struct {
	dir   string // owned by the server's user: data/, the socket, postgres.log
	cmd   *exec.Cmd
	done  chan struct{} // closed once the server process has exited
	admin *sql.DB       // the "postgres" database, to create and drop databases

	stopOnce sync.Once
	stopped  atomic.Bool
	stopErr  error
}

// findBin returns the directory holding initdb, postgres and pg_isready.
func findBin() (string, error) {
	if _, err := os.Stat(filepath.Join(binDir, "initdb")); err == nil {
		return binDir, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(dirs) > 0 {
		sort.Strings(dirs)
		return filepath.Dir(dirs[len(dirs)-1]), nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errMissing
}

// credential returns who runs the server: nobody when we are root, else
// nil (ourselves).
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		return nil, fmt.Errorf("initdb refuses root and there is no user nobody to run it as: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, err
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// Start starts a server of the test's own, stopped and removed when the
// test ends. A missing PostgreSQL skips the test, or fails it under CI.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := start(t.Context())
	if errors.Is(err, errMissing) {
		testenv.Missing(t, err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func start(ctx context.Context) (_ *Server, err error) {
	bin, err := findBin()
	if err != nil {
		return nil, err
	}
	cred, err := credential()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "cf-pg-")
	if err != nil {
		return nil, fmt.Errorf("postgres test server: %w", err)
	}
	s := &Server{dir: dir, done: make(chan struct{})}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Stop())
		}
	}()
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, fmt.Errorf("postgres test server: give %s to the server's user: %w", dir, err)
		}
	}
	run := func(name string, args ...string) *exec.Cmd {
		c := exec.Command(filepath.Join(bin, name), args...)
		c.Dir = dir // the caller's working directory may be closed to nobody
		c.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C", "TZ=UTC"}
		// Setsid: the server's processes form a group of their own, which
		// Stop signals as a whole. Pdeathsig: should the test binary die
		// without stopping it, the postmaster dies too (and its backends
		// exit when they notice).
		c.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setsid: true, Pdeathsig: syscall.SIGKILL}
		return c
	}

	data := filepath.Join(dir, "data")
	initCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	initdb := run("initdb", "-D", data, "-U", superuser, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
	if out, err := runContext(initCtx, initdb); err != nil {
		return nil, fmt.Errorf("postgres test server: initdb: %w\n%s", err, out)
	}

	logFile, err := os.Create(filepath.Join(dir, "postgres.log"))
	if err != nil {
		return nil, fmt.Errorf("postgres test server: %w", err)
	}
	defer logFile.Close()
	// Durability is off: the data is thrown away after the tests.
	s.cmd = run("postgres", "-D", data, "-k", dir, "-p", strconv.Itoa(port),
		"-c", "listen_addresses=", "-c", "max_connections=300",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	if err := s.cmd.Start(); err != nil {
		s.cmd = nil
		return nil, fmt.Errorf("postgres test server: start postgres: %w", err)
	}
	go func() {
		_ = s.cmd.Wait() // the exit is reported by pg_isready failing and the log
		close(s.done)
	}()

	for {
		ready := run("pg_isready", "-q", "-h", dir, "-p", strconv.Itoa(port), "-U", superuser)
		if _, err := runContext(initCtx, ready); err == nil {
			break
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("postgres test server exited while starting; its log:\n%s", s.Log())
		case <-initCtx.Done():
			return nil, fmt.Errorf("postgres test server not ready: %w; its log:\n%s", initCtx.Err(), s.Log())
		case <-time.After(50 * time.Millisecond):
		}
	}
	s.admin, err = sql.Open("pgx", s.DSN("postgres"))
	if err != nil {
		return nil, fmt.Errorf("postgres test server: %w", err)
	}
	if err := s.admin.PingContext(initCtx); err != nil {
		return nil, fmt.Errorf("postgres test server: connect: %w; its log:\n%s", err, s.Log())
	}
	return s, nil
}

// runContext runs c, killing its process group when ctx ends.
func runContext(ctx context.Context, c *exec.Cmd) ([]byte, error) {
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	if err := c.Start(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case err := <-done:
		return out.Bytes(), err
	case <-ctx.Done():
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL) // it may have just exited
		return out.Bytes(), errors.Join(ctx.Err(), <-done)
	}
}

// DSN returns the URL that connects to database on this server.
func (s *Server) DSN(database string) string {
	q := url.Values{"host": {s.dir}, "port": {strconv.Itoa(port)}, "sslmode": {"disable"}}
	return (&url.URL{Scheme: "postgres", User: url.User(superuser), Path: "/" + database, RawQuery: q.Encode()}).String()
}

// Log returns what the server has logged so far.
func (s *Server) Log() string {
	b, err := os.ReadFile(filepath.Join(s.dir, "postgres.log"))
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(b)
}

// CreateDatabase creates an empty database with a random name, dropped
// when the test ends, and returns its DSN.
func (s *Server) CreateDatabase(t testing.TB) string {
	t.Helper()
	b := make([]byte, 8)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	name := "t_" + hex.EncodeToString(b)
	if _, err := s.admin.ExecContext(t.Context(), `CREATE DATABASE `+name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		if s.stopped.Load() {
			return // gone with the server
		}
		// FORCE: connections the test left open (a pool) do not keep it.
		if _, err := s.admin.ExecContext(context.Background(), `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil {
			t.Errorf("drop test database %s: %v", name, err)
		}
	})
	return s.DSN(name)
}

// Stop stops the server: SIGTERM to its process group (the postmaster's
// smart shutdown, which waits for open sessions: the tests' databases are
// dropped WITH (FORCE), which ends theirs), SIGKILL after stopGrace (its
// backends exit when they notice), then removes its directory. It is safe
// to call more than once.
func (s *Server) Stop() error {
	s.stopOnce.Do(func() {
		s.stopped.Store(true)
		var errs []error
		if s.admin != nil {
			errs = append(errs, s.admin.Close())
		}
		if s.cmd != nil {
			pgid := -s.cmd.Process.Pid
			if err := syscall.Kill(pgid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
				errs = append(errs, fmt.Errorf("stop postgres test server: %w", err))
			}
			select {
			case <-s.done:
			case <-time.After(stopGrace):
				if err := syscall.Kill(pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
					errs = append(errs, fmt.Errorf("kill postgres test server: %w", err))
				}
				<-s.done
			}
			// What else of the group is left (nothing, normally). The
			// backends are not in it (PostgreSQL gives each child a
			// session of its own): they end when the postmaster does.
			_ = syscall.Kill(pgid, syscall.SIGKILL)
		}
		if err := os.RemoveAll(s.dir); err != nil {
			errs = append(errs, fmt.Errorf("remove postgres test server directory: %w", err))
		}
		s.stopErr = errors.Join(errs...)
	})
	return s.stopErr
}

// shared is the test binary's server. Package-level because it outlives
// every test: started by the first NewDatabase, stopped by Main.
var shared struct {
	mu      sync.Mutex
	managed bool // Main is running the tests
	started bool
	srv     *Server
	err     error
}

// Main runs the tests and then stops the shared server, if one started.
// Call it from TestMain: os.Exit(pgtest.Main(m)).
func Main(m *testing.M) int {
	shared.mu.Lock()
	shared.managed = true
	shared.mu.Unlock()
	code := m.Run()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.srv != nil {
		if err := shared.srv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// NewDatabase returns the DSN of a fresh, empty database on the test
// binary's shared server, starting the server on first use. A missing
// PostgreSQL skips the test, or fails it under CI.
func NewDatabase(t testing.TB) string {
	t.Helper()
	shared.mu.Lock()
	if !shared.managed {
		shared.mu.Unlock()
		t.Fatal("pgtest.NewDatabase: the package's TestMain must call pgtest.Main, which stops the shared server")
	}
	if !shared.started {
		shared.started = true
		// Not the test's context: the server outlives this test.
		shared.srv, shared.err = start(context.Background())
	}
	srv, err := shared.srv, shared.err
	shared.mu.Unlock()
	if errors.Is(err, errMissing) {
		testenv.Missing(t, err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	return srv.CreateDatabase(t)
}
