package testsupport

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestNewBrowser checks the browser helper: it loads a page, reads the
// DOM, records the page's console messages and uncaught exceptions, and
// dismisses (and records) a dialog, so the page goes on.
func TestNewBrowser(t *testing.T) {
	RequireChromium(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, `<!doctype html><title>cf test page</title><p id="p">hello</p>
<script>console.log("page says hi"); setTimeout(() => { throw new Error("boom from the page"); }, 0);</script>`)
	}))
	defer srv.Close()

	b := NewBrowser(t)
	ctx, cancel := context.WithTimeout(b.Ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL), chromedp.WaitVisible(chromedp.ID("p"))); err != nil {
		t.Fatal(err)
	}
	title, err := chromedp.Run(ctx, chromedp.Title())
	if err != nil || title != "cf test page" {
		t.Errorf("title = %q (%v)", title, err)
	}
	WaitUntil(t, "the page's exception to be recorded", func() bool { return len(b.Exceptions()) > 0 })
	if ex := b.Exceptions(); !strings.Contains(ex[0], "boom from the page") {
		t.Errorf("exceptions = %q", ex)
	}
	// An alert would stop the page until answered: the helper dismisses it.
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`setTimeout(() => { alert("oops"); document.getElementById("p").textContent = "went on"; }, 0)`)); err != nil {
		t.Fatal(err)
	}
	WaitUntil(t, "the dialog to be recorded", func() bool { return len(b.Dialogs()) > 0 })
	if d := b.Dialogs(); len(d) != 1 || d[0] != "alert: oops" {
		t.Errorf("dialogs = %q, want the page's alert", d)
	}
	if ex := b.Exceptions(); len(ex) != 2 || ex[0] != "dialog alert: oops" {
		t.Errorf("exceptions = %q, want the dialog reported too", ex)
	}
	WaitUntil(t, "the page to go on after the dialog", func() bool {
		text, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("p").textContent`))
		if err != nil {
			t.Fatal(err)
		}
		return text == "went on"
	})
	found := false
	for _, m := range b.Console() {
		found = found || strings.Contains(m.Text, "page says hi")
	}
	if !found {
		t.Errorf("console = %v, want the page's console.log", b.Console())
	}
}
