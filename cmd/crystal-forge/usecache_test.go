package main

import (
	"errors"
	"fmt"
	"html"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// snippet returns the text of the page's <pre> with that id.
func snippet(t *testing.T, page, id string) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)<pre id="` + id + `">(.*?)</pre>`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("the page has no #%s snippet", id)
	}
	return html.UnescapeString(m[1])
}

// TestUseCacheSnippets follows the page's instructions: /info's cache_url
// is public_url, and the nix.conf lines the page gives, added to a Nix
// configuration that already has a substituter, keep it and let a real Nix
// client substitute a closure from the server's cache, signatures checked.
// The NixOS snippet is checked to be a Nix expression.
func TestUseCacheSnippets(t *testing.T) {
	testsupport.RequireNix(t)
	c := testsupport.WriteServerConfig(t, testsupport.ServerOptions{})
	publicURL := fmt.Sprintf("http://127.0.0.1:%d", c.CachePort)
	f, err := os.OpenFile(c.File, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The configuration has no [[table]]: this line is top-level.
	_, err = fmt.Fprintf(f, "public_url = %q\n", publicURL+"/")
	if err = errors.Join(err, f.Close()); err != nil {
		t.Fatal(err)
	}
	srv := testsupport.StartServerWithConfig(t, c)

	var info struct {
		CacheURL  string `json:"cache_url"`
		PublicKey string `json:"public_key"`
	}
	srv.GetJSON(t, "/info", &info)
	if info.CacheURL != publicURL {
		t.Errorf("/info cache_url = %q, want public_url %q", info.CacheURL, publicURL)
	}
	code, body := srv.Get(t, "/")
	if code != 200 {
		t.Fatalf("GET / = %d", code)
	}
	page := string(body)
	if !strings.Contains(page, `<code id="cache-url">`+publicURL+`</code>`) {
		t.Errorf("the page does not show the cache URL %s", publicURL)
	}
	nixConf := snippet(t, page, "nix-conf")
	want := "extra-substituters = " + publicURL + "\nextra-trusted-public-keys = " + info.PublicKey
	if nixConf != want {
		t.Errorf("nix.conf snippet = %q, want %q", nixConf, want)
	}

	// Added to a configuration with a default cache, it adds, not replaces.
	const other = "http://cache.example.invalid"
	base := "experimental-features = nix-command flakes\nsandbox = false\nsubstituters = " + other + "\ntrusted-public-keys = cache.example.invalid-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
	out, err := testsupport.NixCommandEnv(t.Context(), []string{"NIX_CONFIG=" + base + nixConf}, "nix", "show-config")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		if k, v, _ := strings.Cut(line, " = "); k == "substituters" && (!strings.Contains(v, other) || !strings.Contains(v, publicURL)) {
			t.Errorf("substituters with the snippet = %q, want both %s and %s", v, other, publicURL)
		} else if k == "trusted-public-keys" && (!strings.Contains(v, "cache.example.invalid-1:") || !strings.Contains(v, info.PublicKey)) {
			t.Errorf("trusted-public-keys with the snippet = %q, want both keys", v)
		}
	}

	// A real client substitutes through it: only the snippet says where
	// the cache is and which key to trust.
	closure := testsupport.BuildClosure(t)
	dest := testsupport.NewLocalStore(t)
	offline := "experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\n"
	env := []string{"NIX_CONFIG=" + offline + nixConf, "XDG_CACHE_HOME=" + t.TempDir()}
	if out, err := testsupport.NixCommandEnv(t.Context(), env, "nix-store", "--store", dest, "--realise", closure.Top); err != nil {
		t.Fatalf("substitute with the page's nix.conf lines: %v\n%s", err, out)
	}
	if out, err := testsupport.NixCommand(t.Context(), "nix", "path-info", "--store", dest, "--sigs", closure.Top); err != nil || !strings.Contains(out, info.PublicKey[:strings.IndexByte(info.PublicKey, ':')+1]) {
		t.Errorf("substituted path: %v, signatures %q, want the server's", err, out)
	}

	nixos := snippet(t, page, "nixos-conf")
	if !strings.Contains(nixos, `extra-substituters = [ "`+publicURL+`" ];`) || !strings.Contains(nixos, `extra-trusted-public-keys = [ "`+info.PublicKey+`" ];`) {
		t.Errorf("NixOS snippet = %q, want extra-substituters and extra-trusted-public-keys", nixos)
	}
	if out, err := testsupport.NixCommand(t.Context(), "nix-instantiate", "--parse", "-E", "{ ... }: { "+nixos+" }"); err != nil {
		t.Errorf("the NixOS snippet is not Nix: %v\n%s", err, out)
	}
}
