package testsupport

// A real `crystal-forge server` process for end-to-end tests: the binary is
// built once per test process, each server gets its own configuration file,
// data directory and ports, and can be stopped gracefully or killed like a
// power cut.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/api"
)

// serverPackage is the import path of the binary StartServer runs.
const serverPackage = "github.com/crystal-forge/crystal-forge/cmd/crystal-forge"

// xdgCacheHome is XDG_CACHE_HOME as the test process started, before
// RequireNix pointed it at a temporary directory: the go command keeps its
// build cache there, and building the server with an empty cache takes
// minutes instead of seconds.
var xdgCacheHome, xdgCacheHomeSet = os.LookupEnv("XDG_CACHE_HOME")

// goEnv is the environment for the go command.
func goEnv() []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "XDG_CACHE_HOME=") })
	if xdgCacheHomeSet {
		env = append(env, "XDG_CACHE_HOME="+xdgCacheHome)
	}
	return env
}

// moduleDir is the directory of this file, inside the module, where the go
// command finds go.mod whatever the test's working directory.
func moduleDir() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok || !filepath.IsAbs(file) {
		return ""
	}
	if _, err := os.Stat(file); err != nil {
		return ""
	}
	return filepath.Dir(file)
}

var serverBinary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// CrystalForgeBinary builds the crystal-forge command once per test process
// (with -race when the tests run with -race, which reuses their compiled
// packages) and returns its path. Call RemoveCrystalForgeBinary from
// TestMain to delete it afterwards.
func CrystalForgeBinary(t testing.TB) string {
	t.Helper()
	b := &serverBinary
	b.once.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			b.err = fmt.Errorf("the go command is not on PATH: %w", err)
			return
		}
		b.dir, b.err = os.MkdirTemp("", "crystal-forge-test-bin-")
		if b.err != nil {
			return
		}
		b.path = filepath.Join(b.dir, "crystal-forge")
		args := []string{"build", "-o", b.path}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, serverPackage)
		cmd := exec.Command(goTool, args...)
		cmd.Env = goEnv()
		cmd.Dir = moduleDir()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
		}
	})
	if b.err != nil {
		t.Fatalf("build crystal-forge: %v", b.err)
	}
	return b.path
}

// RemoveCrystalForgeBinary deletes the binary CrystalForgeBinary built, if
// any. Call it from TestMain after m.Run.
func RemoveCrystalForgeBinary() error {
	if serverBinary.dir == "" {
		return nil
	}
	if err := os.RemoveAll(serverBinary.dir); err != nil {
		return fmt.Errorf("remove the test's crystal-forge binary: %w", err)
	}
	return nil
}

// FreeTCPPort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreeTCPPort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// ServerRepository is a repository in the server's configuration.
type ServerRepository struct {
	Name, URL string
	Branch    string // default main
}

// ServerOptions configure StartServer.
type ServerOptions struct {
	Repositories []ServerRepository
	// Hostname is the configured hostname; empty leaves the default.
	Hostname string
	// PollInterval is poll_interval; empty means "0" (no polling).
	PollInterval string
	// ExtraTOML is added to the top level of the configuration.
	ExtraTOML string
	// Env is added to the server's environment ("KEY=value").
	Env []string
	// Ready, when set, replaces GET /health on loopback as the sign that
	// the server is up (one listening on the tailnet only has no loopback
	// port).
	Ready func(*Server) bool
	// Args are added to `crystal-forge server --config FILE`.
	Args []string
}

// ServerConfig is a written configuration file and what it says.
type ServerConfig struct {
	File      string // the TOML file
	DataDir   string
	KeyFile   string
	APIPort   int
	CachePort int
	Env       []string
	opts      ServerOptions
}

// WriteServerConfig writes a configuration for a server on two free ports
// of 127.0.0.1, with its data directory and key in a new temporary
// directory.
func WriteServerConfig(t testing.TB, opts ServerOptions) *ServerConfig {
	t.Helper()
	dir := t.TempDir()
	c := &ServerConfig{
		File:    filepath.Join(dir, "crystal-forge.toml"),
		DataDir: filepath.Join(dir, "data"),
		Env:     opts.Env,
		opts:    opts,
	}
	c.KeyFile = filepath.Join(c.DataDir, "cache-key")
	c.pickPorts(t)
	return c
}

func (c *ServerConfig) pickPorts(t testing.TB) {
	t.Helper()
	c.APIPort = FreeTCPPort(t)
	for c.CachePort = FreeTCPPort(t); c.CachePort == c.APIPort; c.CachePort = FreeTCPPort(t) {
	}
	if err := os.WriteFile(c.File, []byte(c.toml()), 0o644); err != nil {
		t.Fatalf("write server config: %v", err)
	}
}

func (c *ServerConfig) toml() string {
	var b strings.Builder
	poll := c.opts.PollInterval
	if poll == "" {
		poll = "0"
	}
	fmt.Fprintf(&b, "data_dir = %s\n", tomlString(c.DataDir))
	fmt.Fprintf(&b, "key_file = %s\n", tomlString(c.KeyFile))
	fmt.Fprintf(&b, "bind = \"127.0.0.1\"\n")
	fmt.Fprintf(&b, "api_port = %d\ncache_port = %d\n", c.APIPort, c.CachePort)
	fmt.Fprintf(&b, "poll_interval = %s\n", tomlString(poll))
	if c.opts.Hostname != "" {
		fmt.Fprintf(&b, "hostname = %s\n", tomlString(c.opts.Hostname))
	}
	if c.opts.ExtraTOML != "" {
		b.WriteString(strings.TrimSpace(c.opts.ExtraTOML) + "\n")
	}
	for _, r := range c.opts.Repositories {
		branch := r.Branch
		if branch == "" {
			branch = "main"
		}
		fmt.Fprintf(&b, "\n[[repositories]]\nname = %s\nurl = %s\nbranch = %s\n", tomlString(r.Name), tomlString(r.URL), tomlString(branch))
	}
	return b.String()
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, "\\u%04x", r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// Server is a `crystal-forge server` process started by a test.
type Server struct {
	Config *ServerConfig
	// URL is the API's base URL, http://127.0.0.1:<api_port>.
	URL string
	// CacheURL is the binary cache's base URL.
	CacheURL string
	Cmd      *exec.Cmd
	// StdoutFile and StderrFile hold the process's output.
	StdoutFile, StderrFile string

	done  chan struct{}
	state *os.ProcessState
	werr  error
}

// StartServer writes a configuration (see WriteServerConfig) and starts a
// server with it, waiting until GET /health answers. If another process
// took one of the ports in the meantime it tries again with new ones.
// The server needs nix and git on PATH (see RequireNix).
func StartServer(t testing.TB, opts ServerOptions) *Server {
	t.Helper()
	c := WriteServerConfig(t, opts)
	for attempt := 1; ; attempt++ {
		s, err := startServer(t, c)
		if err == nil {
			return s
		}
		if attempt < 3 && strings.Contains(s.Stderr(), "address already in use") {
			t.Logf("port taken, retrying with new ports: %v", err)
			c.pickPorts(t)
			continue
		}
		t.Fatal(err)
	}
}

// StartServerWithConfig starts a server with an existing configuration, for
// example again after stopping or killing one, and waits for GET /health.
func StartServerWithConfig(t testing.TB, c *ServerConfig) *Server {
	t.Helper()
	s, err := startServer(t, c)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func startServer(t testing.TB, c *ServerConfig) (*Server, error) {
	t.Helper()
	bin := CrystalForgeBinary(t)
	logDir := t.TempDir()
	s := &Server{
		Config:     c,
		URL:        fmt.Sprintf("http://127.0.0.1:%d", c.APIPort),
		CacheURL:   fmt.Sprintf("http://127.0.0.1:%d", c.CachePort),
		StdoutFile: filepath.Join(logDir, "stdout"),
		StderrFile: filepath.Join(logDir, "stderr"),
		done:       make(chan struct{}),
	}
	stdout, err := os.Create(s.StdoutFile)
	if err != nil {
		return s, err
	}
	defer stdout.Close()
	stderr, err := os.Create(s.StderrFile)
	if err != nil {
		return s, err
	}
	defer stderr.Close()

	cmd := exec.Command(bin, append([]string{"server", "--config", c.File}, c.opts.Args...)...)
	cmd.Env = append(serverEnv(os.Environ()),
		"NIX_CONFIG="+nixConfig,
		"NIX_PATH=",
		"XDG_CACHE_HOME="+t.TempDir(),
	)
	cmd.Env = append(cmd.Env, c.Env...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return s, fmt.Errorf("start %s: %w", bin, err)
	}
	s.Cmd = cmd
	go func() {
		s.werr = cmd.Wait()
		s.state = cmd.ProcessState
		close(s.done)
	}()
	t.Cleanup(func() {
		if s.Running() {
			s.Kill(t)
		}
		errOut := s.Stderr()
		if raceEnabled && strings.Contains(errOut, "WARNING: DATA RACE") {
			t.Errorf("the server reported a data race:\n%s", errOut)
		} else if t.Failed() {
			t.Logf("server (pid %d) stderr:\n%s", cmd.Process.Pid, tailString(errOut, 8000))
		}
	})

	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-s.done:
			return s, fmt.Errorf("crystal-forge server exited before it was ready (%v); stderr:\n%s", s.werr, tailString(s.Stderr(), 4000))
		default:
		}
		var err error
		if ready := c.opts.Ready; ready != nil {
			if ready(s) {
				return s, nil
			}
		} else if resp, gerr := client.Get(s.URL + "/health"); gerr == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		} else {
			err = gerr
		}
		if time.Now().After(deadline) {
			s.Kill(t)
			return s, fmt.Errorf("crystal-forge server did not answer GET /health within 60s (last: %v); stderr:\n%s", err, tailString(s.Stderr(), 4000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// serverEnv drops the settings a developer's shell might have that would
// override the test's configuration file.
func serverEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "BUILD_SERVER_") || k == "ENABLE_WEB_UI" || k == "NIX_CONFIG" || k == "NIX_PATH" || k == "XDG_CACHE_HOME" {
			continue
		}
		out = append(out, kv)
	}
	return out
}

func tailString(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// Stdout returns what the server has written to stdout.
func (s *Server) Stdout() string {
	b, _ := os.ReadFile(s.StdoutFile)
	return string(b)
}

// Stderr returns what the server has written to stderr (its log).
func (s *Server) Stderr() string {
	b, _ := os.ReadFile(s.StderrFile)
	return string(b)
}

// Running reports whether the process has not exited yet.
func (s *Server) Running() bool {
	if s.Cmd == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// Wait waits up to timeout for the process to exit and returns its exit
// code (-1 when killed by a signal).
func (s *Server) Wait(timeout time.Duration) (int, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-s.done:
	case <-timer.C:
		select {
		case <-s.done:
		default:
			return 0, fmt.Errorf("crystal-forge server (pid %d) still running after %s", s.Cmd.Process.Pid, timeout)
		}
	}
	return s.state.ExitCode(), nil
}

// Stop sends SIGTERM to the server's process group and waits up to grace
// for it to exit; then it kills everything (see Kill). It returns the exit
// code, or -1 when the server had to be killed.
func (s *Server) Stop(t testing.TB, grace time.Duration) int {
	t.Helper()
	if !s.Running() {
		return s.state.ExitCode()
	}
	signal(t, -s.Cmd.Process.Pid, syscall.SIGTERM)
	if code, err := s.Wait(grace); err == nil {
		return code
	}
	t.Errorf("crystal-forge server did not exit within %s of SIGTERM; killing it", grace)
	s.Kill(t)
	return -1
}

// Kill kills the server the way a power cut would: SIGKILL to its process
// group and to every process it started, including the nix commands and
// builders, which run in process groups and sessions of their own. The
// tree is frozen with SIGSTOP first so nothing escapes by forking.
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	if !s.Running() {
		return
	}
	pid := s.Cmd.Process.Pid
	signal(t, -pid, syscall.SIGSTOP)
	stopped := map[int]bool{}
	for range 100 {
		more := false
		for _, p := range procDescendants(pid) {
			if !stopped[p] {
				signal(t, p, syscall.SIGSTOP)
				stopped[p] = true
				more = true
			}
		}
		if !more {
			break
		}
	}
	signal(t, -pid, syscall.SIGKILL)
	for p := range stopped {
		signal(t, p, syscall.SIGKILL)
	}
	if _, err := s.Wait(30 * time.Second); err != nil {
		t.Errorf("kill: %v", err)
	}
	// The orphans are reaped by init; wait until they are gone so nothing
	// they held (store locks, open files) outlives the kill.
	deadline := time.Now().Add(10 * time.Second)
	for p := range stopped {
		for ProcessAlive(p) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// Crash kills only the server process with SIGKILL, as `kill -9 <pid>` or
// the OOM killer would, and waits for it to exit: what it started is left
// to whatever the server arranged for that.
func (s *Server) Crash(t testing.TB) {
	t.Helper()
	if !s.Running() {
		return
	}
	if err := syscall.Kill(s.Cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Errorf("crash: kill -9 %d: %v", s.Cmd.Process.Pid, err)
	}
	if _, err := s.Wait(30 * time.Second); err != nil {
		t.Errorf("crash: %v", err)
	}
}

// ProcessParent returns the parent pid of a live process, from /proc.
func ProcessParent(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	ppid, ok := procParent(string(b))
	if !ok {
		return 0, fmt.Errorf("cannot parse /proc/%d/stat: %q", pid, b)
	}
	return ppid, nil
}

// procDescendants returns the processes below pid, from /proc.
func procDescendants(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		if ppid, ok := procParent(string(b)); ok {
			children[ppid] = append(children[ppid], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// procParent parses the parent pid from /proc/<pid>/stat,
// "pid (comm) state ppid ...", where comm may contain anything.
func procParent(stat string) (ppid int, ok bool) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(f[1])
	return ppid, err == nil
}

// Get requests path (relative to URL) and returns the status and body.
func (s *Server) Get(t testing.TB, path string) (int, []byte) {
	t.Helper()
	return s.do(t, http.MethodGet, path)
}

// Post POSTs to path with no body and returns the status and body.
func (s *Server) Post(t testing.TB, path string) (int, []byte) {
	t.Helper()
	return s.do(t, http.MethodPost, path)
}

// GetJSON GETs path, requires 200 and decodes the JSON answer into v.
func (s *Server) GetJSON(t testing.TB, path string, v any) {
	t.Helper()
	code, body := s.Get(t, path)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, code, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v in %s", path, err, body)
	}
}

// Build returns GET /api/v1/builds/{id}: the build and its results.
func (s *Server) Build(t testing.TB, id int64) api.Build {
	t.Helper()
	var b api.Build
	s.GetJSON(t, fmt.Sprintf("/api/v1/builds/%d", id), &b)
	if b.Build == nil {
		t.Fatalf("GET /api/v1/builds/%d: no build", id)
	}
	return b
}

// Log returns the whole log of a build, from GET /api/v1/builds/{id}/log.
func (s *Server) Log(t testing.TB, id int64) string {
	t.Helper()
	code, body := s.Get(t, fmt.Sprintf("/api/v1/builds/%d/log", id))
	if code != http.StatusOK {
		t.Fatalf("GET /api/v1/builds/%d/log = %d %s", id, code, body)
	}
	return string(body)
}

var serverTestClient = &http.Client{Timeout: 30 * time.Second}

func (s *Server) do(t testing.TB, method, path string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, s.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := serverTestClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, bytes.TrimSpace(body)
}

// signal sends sig to pid (negative: to that process group). A process that
// has already exited (ESRCH) is what the caller wants anyway; anything else,
// such as EPERM, means the process lives on, and the test must say so.
func signal(t testing.TB, pid int, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		t.Errorf("send %v to %d: %v", sig, pid, err)
	}
}
