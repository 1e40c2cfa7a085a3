package pgtest

import (
	"database/sql"
	"errors"
	"os"
	"syscall"
	"testing"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// TestStartStop: a private server serves queries as the unprivileged
// user; Stop leaves no process of its group and no directory behind.
func TestStartStop(t *testing.T) {
	s := Start(t)
	conn, err := sql.Open("pgx", s.CreateDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := conn.Close(); err != nil {
			t.Error(err)
		}
	}()
	var owner string
	// The data directory's owner is the server's user: not root.
	if err := conn.QueryRowContext(t.Context(), `SELECT current_setting('data_directory')`).Scan(&owner); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(owner); err != nil {
		t.Fatal(err)
	} else if os.Geteuid() == 0 && st.Sys().(*syscall.Stat_t).Uid == 0 {
		t.Errorf("data directory %s is owned by root", owner)
	}
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}

	pgid := s.cmd.Process.Pid
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(-pgid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("process group %d still there after Stop (kill 0: %v)", pgid, err)
	}
	if _, err := os.Stat(s.dir); !os.IsNotExist(err) {
		t.Errorf("server directory %s still there after Stop: %v", s.dir, err)
	}
}

// TestNewDatabase: databases of the shared server are distinct and empty.
func TestNewDatabase(t *testing.T) {
	a, b := NewDatabase(t), NewDatabase(t)
	if a == b {
		t.Fatalf("two tests share database %s", a)
	}
	for _, dsn := range []string{a, b} {
		conn, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.ExecContext(t.Context(), `CREATE TABLE only_here (x INT)`); err != nil {
			t.Errorf("%s: %v", dsn, err)
		}
		if err := conn.Close(); err != nil {
			t.Error(err)
		}
	}
}
