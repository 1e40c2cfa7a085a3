package testsupport

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/testsupport/testenv"
)

// gitEnv makes the git commands of a test independent of the machine's
// configuration: a fixed identity, no global or system config, no prompts.
var gitEnv = []string{
	"GIT_AUTHOR_NAME=Crystal Forge Test",
	"GIT_AUTHOR_EMAIL=test@crystal-forge.invalid",
	"GIT_COMMITTER_NAME=Crystal Forge Test",
	"GIT_COMMITTER_EMAIL=test@crystal-forge.invalid",
	"GIT_CONFIG_GLOBAL=/dev/null",
	"GIT_CONFIG_NOSYSTEM=1",
	"GIT_TERMINAL_PROMPT=0",
}

// Nonce returns a random hex string; put it in a fixture's derivations so
// that every test builds new store paths instead of finding old ones.
func Nonce() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Git runs git with args in dir and returns its trimmed stdout; it fails
// the test when git fails.
func Git(t testing.TB, dir string, args ...string) string {
	t.Helper()
	testenv.LookPath(t, "`make test` installs git", "git")
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), "git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), gitEnv...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("git %s in %s: %v\n%s", strings.Join(args, " "), dir, err, stderr.Bytes())
	}
	return strings.TrimSpace(stdout.String())
}

// WriteFiles writes files (path relative to dir → content) into dir,
// creating directories as needed.
func WriteFiles(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// NewGitRepo creates a git repository on branch main in a new temporary
// directory, commits files to it and returns the directory. The directory
// is a valid repository URL for the build server.
func NewGitRepo(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	Git(t, dir, "init", "-q", "-b", "main")
	Commit(t, dir, files)
	return dir
}

// Commit writes files into the repository at dir (an empty content
// deletes the file), commits everything and returns the new commit id.
func Commit(t testing.TB, dir string, files map[string]string) string {
	t.Helper()
	write := map[string]string{}
	names := make([]string, 0, len(files))
	for name, content := range files {
		names = append(names, name)
		if content == "" {
			if err := os.Remove(filepath.Join(dir, filepath.FromSlash(name))); err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			continue
		}
		write[name] = content
	}
	WriteFiles(t, dir, write)
	slices.Sort(names)
	Git(t, dir, "add", "-A")
	Git(t, dir, "commit", "-q", "--allow-empty", "-m", "Update "+strings.Join(names, ", "))
	return Head(t, dir)
}

// Head returns the full id of the repository's HEAD commit.
func Head(t testing.TB, dir string) string {
	t.Helper()
	return Git(t, dir, "rev-parse", "HEAD")
}

// ShortHead returns `git rev-parse --short HEAD` of the repository.
func ShortHead(t testing.TB, dir string) string {
	t.Helper()
	return Git(t, dir, "rev-parse", "--short", "HEAD")
}

// SilentRemote listens on a TCP port of 127.0.0.1 that accepts
// connections and then never says anything, like a git server that hangs.
// It returns the listener's address (host:port); connections are held
// until the test ends.
func SilentRemote(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}
