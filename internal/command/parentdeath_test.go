package command

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary act as a parent process that starts a
// program with New and then waits to be killed.
const helperEnv = "CF_COMMAND_TEST_PARENT"

func TestMain(m *testing.M) {
	if spec := os.Getenv(helperEnv); spec != "" {
		os.Exit(parentHelper(spec))
	}
	os.Exit(m.Run())
}

// parentHelper starts a shell through New from a goroutine, then makes
// the Go runtime retire OS threads (a goroutine that exits while locked to
// its thread ends the thread), the case where a parent-death signal tied to
// the wrong thread could fire early (this churn does not reliably hit the
// forking thread; Process.Run's comment says why it cannot). It prints "ready" once the shell runs
// and blocks until killed. The shell writes its pid to pidfile and the
// first of SIGTERM ("term") or SIGWINCH ("winch") it gets to reportfile.
func parentHelper(spec string) int {
	f := strings.Split(spec, ",")
	pidFile, report, outlive := f[0], f[1], f[2] == "outlive"
	script := fmt.Sprintf(`trap 'echo term >> %[1]s; exit 0' TERM
trap 'echo winch >> %[1]s; exit 0' WINCH
echo $$ > %[2]s
sleep 300 &
wait`, report, pidFile)
	// This helper process is killed while the shell runs: Run never
	// returns to anyone who could look at its error.
	go func() { _ = New(context.Background(), Cmd{OutliveParent: outlive}, "sh", "-c", script).Run() }()
	for {
		if b, err := os.ReadFile(pidFile); err == nil && strings.HasSuffix(string(b), "\n") {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() { runtime.LockOSThread() })
	}
	wg.Wait()
	fmt.Println("ready")
	select {}
}

// TestParentDeath kills a parent with SIGKILL and checks that what it
// started through New gets SIGTERM, unless OutliveParent says otherwise.
// After the parent is reaped the test sends SIGWINCH: the kernel sends the
// parent-death signal while the parent exits, before it can be reaped, and
// delivers the lower-numbered of two pending signals first, so the shell
// reports "term" exactly when the parent-death signal came.
func TestParentDeath(t *testing.T) {
	for _, tt := range []struct {
		name    string
		outlive bool
		want    string
	}{
		{"dies with its parent", false, "term"},
		{"OutliveParent survives", true, "winch"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			pidFile, report := filepath.Join(dir, "pid"), filepath.Join(dir, "report")
			mode := "default"
			if tt.outlive {
				mode = "outlive"
			}
			helper := exec.Command(os.Args[0], "-test.run=^$")
			helper.Env = append(os.Environ(), helperEnv+"="+pidFile+","+report+","+mode)
			out, err := helper.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := helper.Start(); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 6)
			if _, err := io.ReadFull(out, buf); err != nil || string(buf) != "ready\n" {
				if kerr := helper.Process.Kill(); kerr != nil {
					t.Errorf("kill the helper: %v", kerr)
				}
				t.Fatalf("helper did not get ready: %q, %v", buf, err)
			}
			b, err := os.ReadFile(pidFile)
			if err != nil {
				t.Fatal(err)
			}
			child, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			// The shell leads its own process group (Setpgid): this also
			// ends its sleep.
			t.Cleanup(func() {
				// ESRCH: the shell is gone already, as the test wants.
				if err := syscall.Kill(-child, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
					t.Errorf("kill the shell's group: %v", err)
				}
			})
			if r, _ := os.ReadFile(report); len(r) > 0 {
				t.Fatalf("the shell got %q while its parent was still running", r)
			}
			if err := helper.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			if err := helper.Wait(); err == nil {
				t.Fatal("the helper exited by itself; it should block until killed")
			}
			// ESRCH: the shell died with its parent; the report says how.
			if err := syscall.Kill(child, syscall.SIGWINCH); err != nil && !errors.Is(err, syscall.ESRCH) {
				t.Fatal(err)
			}
			var got string
			for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				r, _ := os.ReadFile(report)
				if got, _, _ = strings.Cut(string(r), "\n"); got != "" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the shell reported no signal within 60s")
				}
			}
			if got != tt.want {
				t.Errorf("first signal the shell got after its parent was killed: %s, want %s", got, tt.want)
			}
		})
	}
}
