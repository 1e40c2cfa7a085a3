package agent

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

const testDebounce = 100 * time.Millisecond

// swapLink points link at target atomically, as switch-to-configuration
// does: a new link under a temporary name, renamed over the old one.
func swapLink(t *testing.T, target, link string) {
	t.Helper()
	tmp := link + ".tmp"
	if err := os.Symlink(target, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
}

func expectSignal(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("no signal within 5s after %s", what)
	}
}

func expectNoSignal(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("signal after %s", what)
	case <-time.After(5 * testDebounce):
	}
}

func TestWatchSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "current-system")
	if err := os.Symlink("/nix/store/00000000000000000000000000000000-system-a", link); err != nil {
		t.Fatal(err)
	}
	ch, err := Watch(t.Context(), link, testDebounce, slog.New(slog.NewTextHandler(t.Output(), nil)))
	if err != nil {
		t.Fatal(err)
	}

	swapLink(t, "/nix/store/11111111111111111111111111111111-system-b", link)
	expectSignal(t, ch, "an atomic swap")

	if err := os.WriteFile(filepath.Join(dir, "unrelated"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/elsewhere", filepath.Join(dir, "other-link")); err != nil {
		t.Fatal(err)
	}
	expectNoSignal(t, ch, "changes to other files")

	// Replacing the link by one with the same target is not a change.
	swapLink(t, "/nix/store/11111111111111111111111111111111-system-b", link)
	expectNoSignal(t, ch, "a swap to the same target")

	// Removal, then a new link: each is a change.
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	expectSignal(t, ch, "removing the link")
	if err := os.Symlink("/nix/store/22222222222222222222222222222222-system-c", link); err != nil {
		t.Fatal(err)
	}
	expectSignal(t, ch, "creating the link")
}

func TestWatchMissingDirectory(t *testing.T) {
	_, err := Watch(t.Context(), filepath.Join(t.TempDir(), "no", "current-system"), testDebounce, slog.Default())
	if err == nil {
		t.Fatal("Watch succeeded on a missing directory")
	}
}
