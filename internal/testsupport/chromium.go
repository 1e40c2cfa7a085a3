package testsupport

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/crystal-forge/crystal-forge/internal/testsupport/testenv"
)

// chromiumPaths are where Debian's chromium package (and the usual
// alternatives) put the browser.
var chromiumPaths = []string{"/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"}

// RequireChromium returns the path of the Chromium executable, or skips the
// test when none is installed.
func RequireChromium(t testing.TB) string {
	t.Helper()
	for _, p := range chromiumPaths {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	testenv.Missing(t, "chromium is not installed; `make test` installs it")
	return ""
}

// Browser is a headless Chromium tab driven by chromedp.
type Browser struct {
	// Ctx is the chromedp context of the tab: pass it to chromedp.Run and
	// chromedp.Do. Derive per-step timeouts from it with context.WithTimeout.
	Ctx context.Context
	// OutputFile holds what the browser process wrote to stdout and stderr.
	OutputFile string

	mu      sync.Mutex
	console []chromedp.ConsoleMessage
	dialogs []string
}

// Dialogs returns the messages of the alert, confirm and prompt dialogs the
// page opened so far. Each was dismissed at once: an open dialog would
// stop the page, and every later step would wait for it in vain.
func (b *Browser) Dialogs() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.dialogs)
}

// Console returns the page's console messages so far, uncaught exceptions
// included.
func (b *Browser) Console() []chromedp.ConsoleMessage {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.console)
}

// Exceptions returns the page's uncaught JavaScript exceptions and
// unhandled promise rejections so far, and the dialogs it opened: our page
// opens one only to report a failure.
func (b *Browser) Exceptions() []string {
	var out []string
	for _, d := range b.Dialogs() {
		out = append(out, "dialog "+d)
	}
	for _, m := range b.Console() {
		if m.IsException() {
			out = append(out, fmt.Sprintf("%s (%s:%d)", m.Text, m.URL, m.Line+1))
		}
	}
	return out
}

// NewBrowser starts a headless Chromium with a fresh profile in
// t.TempDir() and returns a tab in it. The browser is closed when the test
// ends; the page's console messages are recorded (see Console), and are
// logged when the test fails.
func NewBrowser(t testing.TB) *Browser {
	t.Helper()
	exe := RequireChromium(t)
	dir := t.TempDir() // removed after the browser has exited (cleanups run LIFO)
	b := &Browser{OutputFile: filepath.Join(dir, "chromium-output.txt")}
	out, err := os.Create(b.OutputFile)
	if err != nil {
		t.Fatal(err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(filepath.Join(dir, "profile")),
		chromedp.WindowSize(1280, 1000),
		chromedp.CombinedOutput(out),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-breakpad", true),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("password-store", "basic"),
		chromedp.Flag("use-mock-keychain", true),
	}
	// chromedp logs from its own goroutines, possibly after the test has
	// returned, when t.Logf panics: log only while the test runs.
	var (
		logMu sync.Mutex
		ended bool
	)
	logf := func(format string, args ...any) {
		logMu.Lock()
		defer logMu.Unlock()
		if !ended {
			t.Logf("chromedp: "+format, args...)
		}
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx, chromedp.WithErrorf(logf))
	b.Ctx = ctx
	t.Cleanup(func() {
		if t.Failed() {
			for _, m := range b.Console() {
				t.Logf("browser console: %s", m)
			}
			for _, d := range b.Dialogs() {
				t.Logf("browser dialog: %s", d)
			}
		}
		cancel()
		cancelAlloc()
		out.Close()
		logMu.Lock()
		ended = true
		logMu.Unlock()
	})
	// Start the browser now, so a broken installation fails here, clearly.
	if err := chromedp.Do(ctx); err != nil {
		o, _ := os.ReadFile(b.OutputFile)
		t.Fatalf("start chromium (%s): %v\n%s", exe, err, o)
	}
	messages := chromedp.Console(ctx)
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	go func() {
		for d, err := range dialogs {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.dialogs = append(b.dialogs, fmt.Sprintf("%s: %s", d.Type, d.Message))
			b.mu.Unlock()
			// Answered from another goroutine: this one delivers the events.
			go func() {
				err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tgt *chromedp.Target) error {
					_, err := cdp.Call(ctx, tgt, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false})
					return err
				}))
				if err != nil && ctx.Err() == nil {
					logf("dismiss a %s dialog: %v", d.Type, err)
				}
			}()
		}
	}()
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.console = append(b.console, m)
			b.mu.Unlock()
		}
	}()
	return b
}
