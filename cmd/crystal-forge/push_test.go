package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/narinfo"
	"github.com/crystal-forge/crystal-forge/internal/objstore"
	"github.com/crystal-forge/crystal-forge/internal/signing"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// startCacheProcess runs `crystal-forge cache` serving only a directory
// backend (so it holds nothing but what is pushed to it), taking uploads
// with token, and returns its URL.
func startCacheProcess(t *testing.T, token string) string {
	t.Helper()
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("server:"+token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keyFile, _ := testsupport.NewCacheKey(t)
	port := testsupport.FreeTCPPort(t)
	cmd := exec.CommandContext(t.Context(), testsupport.CrystalForgeBinary(t), "cache", "--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--key-file", keyFile, "--no-local-store", "--storage", "dir://"+filepath.Join(dir, "objects"), "--upload-token-file", tokens)
	var stderr testsupport.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cmd.Process.Kill(); err != nil {
			t.Errorf("stop the cache process: %v", err)
		}
		_ = cmd.Wait() // "signal: killed", as asked
		if t.Failed() {
			t.Logf("crystal-forge cache:\n%s", stderr.String())
		}
	})
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	testsupport.WaitUntil(t, "the cache process to serve", func() bool {
		resp, err := http.Get(url + "/nix-cache-info")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return url
}

// TestServerPushesBuilds: a server with two [[push]] destinations, a second
// `crystal-forge cache` process (token) and S3, builds a flake with one
// package that builds and one that fails. The package that built is pushed
// to both, recorded per build in the API, and a fresh store copies it back
// from the second cache trusting only the server's key.
func TestServerPushesBuilds(t *testing.T) {
	testsupport.RequireNix(t)
	requireGit(t)
	s3 := testsupport.StartS3(t)
	bucket := s3.NewBucket(t)
	token := "push-" + testsupport.Nonce()
	cacheURL := startCacheProcess(t, token)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	const name = "pushy"
	repoDir := testsupport.NewGitRepo(t, map[string]string{"flake.nix": testsupport.Flake{
		System:   config.DefaultSystem(),
		Nonce:    testsupport.Nonce(),
		Packages: []testsupport.FlakePackage{testsupport.GoodPackage("good", 0), testsupport.FailingPackage("bad")},
	}.Nix()})
	extra := fmt.Sprintf(`[[push]]
name = "central"
url = %q
token_file = %q

[[push]]
name = "bucket"
url = %q
`, cacheURL, tokenFile, s3.URL(bucket))
	srv := testsupport.StartServer(t, testsupport.ServerOptions{
		Repositories: []testsupport.ServerRepository{{Name: name, URL: repoDir}},
		ExtraTOML:    extra,
		Env:          s3.Env(),
	})
	out, err := os.ReadFile(srv.StdoutFile)
	if err != nil {
		t.Fatal(err)
	}
	pub := strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	pk, err := signing.ParsePublicKey(pub)
	if err != nil {
		t.Fatalf("server's public key %q: %v", pub, err)
	}

	id := trigger(t, srv, name)
	b := testsupport.WaitBuildEnded(t, srv, id, db.StatusFailed)
	var good string
	for _, r := range b.Results {
		if r.Attr == "good" && r.Status == db.ResultSuccess && len(r.OutPaths) == 1 {
			good = r.OutPaths[0]
		}
	}
	if good == "" {
		t.Fatalf("package good did not build: %+v", b.Results)
	}
	// The pushes are recorded by the time the build is seen to end.
	if len(b.Pushes) != 2 {
		t.Fatalf("build ended with pushes %+v, want one per destination", b.Pushes)
	}
	testsupport.WaitUntil(t, "the pushes to end", func() bool {
		b = srv.Build(t, id)
		for _, p := range b.Pushes {
			if p.State == db.PushQueued || p.State == db.PushRunning {
				return false
			}
		}
		return true
	})
	for _, p := range b.Pushes {
		if p.State != db.PushSucceeded || p.Attempts != 1 || p.Paths != 1 || p.Uploaded != 1 || p.Bytes <= 0 ||
			len(p.Roots) != 1 || p.Roots[0] != good || p.Error != "" {
			t.Errorf("push to %s: %+v", p.Destination, p)
		}
	}

	// The page shows the pushes under the build.
	br := testsupport.NewBrowser(t)
	ctx, cancel := context.WithTimeout(br.Ctx, 90*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(fmt.Sprintf("%s/builds/%d", srv.URL, id)),
		chromedp.WaitVisible(chromedp.CSS(`#pushes tr[data-destination="bucket"]`))); err != nil {
		t.Fatalf("open the build's page: %v", err)
	}
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[*string](`[...document.querySelectorAll("#pushes tr")].map((r) => r.dataset.destination + "=" + r.querySelector(".push-state").textContent).join(",")`))
	if err != nil || rows == nil || *rows != "central=succeeded,bucket=succeeded" {
		t.Errorf("pushes on the page: %v (%v), want central=succeeded,bucket=succeeded", rows, err)
	}

	// Back from the second cache, trusting only the server's key.
	dest := testsupport.NewLocalStore(t)
	if _, err := testsupport.NixCommandEnv(t.Context(), []string{"XDG_CACHE_HOME=" + t.TempDir()}, "nix", "copy", "--from", cacheURL, "--to", dest,
		"--option", "trusted-public-keys", pub, good); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(dest, good)); err != nil || !strings.HasPrefix(string(got), "good ") {
		t.Errorf("%s copied back: %q, %v", good, got, err)
	}
	// In the bucket: the binary cache layout, signed with the server's key.
	bs, err := objstore.Open(t.Context(), s3.URL(bucket), objstore.Options{Getenv: s3.Getenv})
	if err != nil {
		t.Fatal(err)
	}
	text, err := objstore.ReadAll(t.Context(), bs, filepath.Base(good)[:32]+".narinfo")
	if err != nil {
		t.Fatal(err)
	}
	ni, err := narinfo.Parse(string(text))
	if err != nil {
		t.Fatal(err)
	}
	if !ni.Verify(pk) || ni.StorePath != good || ni.Compression != "zstd" {
		t.Errorf("narinfo in the bucket is not signed by the server or is wrong:\n%s", text)
	}
	if _, err := bs.Stat(t.Context(), ni.URL); err != nil {
		t.Errorf("NAR %s of the narinfo: %v", ni.URL, err)
	}
}
