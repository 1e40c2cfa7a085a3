package command

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestOutput(t *testing.T) {
	out, err := Output(context.Background(), Cmd{Env: []string{"CF_X=42"}}, "sh", "-c", "echo $CF_X")
	if err != nil || strings.TrimSpace(string(out)) != "42" {
		t.Fatalf("Output = %q, %v", out, err)
	}
	_, err = Output(context.Background(), Cmd{}, "sh", "-c", "echo boom >&2; exit 3")
	if err == nil || !strings.Contains(err.Error(), "boom") || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("error = %v, want stderr and exit status", err)
	}
}

// TestCancelKillsGroup: a grandchild of a cancelled command dies too.
func TestCancelKillsGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := New(ctx, Cmd{}, "sh", "-c", "sleep 300 & echo $! > "+pidFile+"; wait")
	done := make(chan error, 1)
	go func() { done <- cmd.Run() }()
	var pid string
	for range 500 {
		b, _ := os.ReadFile(pidFile)
		if pid = strings.TrimSpace(string(b)); pid != "" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if pid == "" {
		t.Fatal("child never started")
	}
	cancel()
	if err := <-done; err == nil {
		t.Error("the cancelled command exited successfully; want it killed")
	}
	for range 500 {
		if _, err := os.Stat("/proc/" + pid); os.IsNotExist(err) {
			return
		}
		b, _ := os.ReadFile("/proc/" + pid + "/stat")
		if strings.Contains(string(b), ") Z ") { // zombie: dead, awaiting its reaper
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("grandchild %s survived the cancel", pid)
}
