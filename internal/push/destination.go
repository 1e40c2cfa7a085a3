package push

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/narinfo"
	"github.com/crystal-forge/crystal-forge/internal/objstore"
)

// Kind is how a destination is reached.
type Kind string

const (
	// KindHTTP is a binary cache that takes PUTs, as `nix copy --to
	// http://…` sends them: another Crystal Forge cache.
	KindHTTP Kind = "http"
	// KindStorage is S3-compatible storage (or a directory) written in the
	// binary cache layout directly.
	KindStorage Kind = "storage"
	// KindAttic is an Attic cache, pushed to with the attic client.
	KindAttic Kind = "attic"
)

// Destination is a configured place to push to.
type Destination struct {
	Name string
	URL  string
	// TokenFile holds the upload token of an http destination.
	TokenFile string
}

// atticCacheRE is what `attic push` takes as a cache: "cache" or
// "server:cache".
var atticCacheRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*(:[A-Za-z0-9][A-Za-z0-9._-]*)?$`)

// KindOf checks a destination URL and says how it is pushed to.
func KindOf(rawURL string) (Kind, error) {
	if cache, ok := strings.CutPrefix(rawURL, "attic://"); ok {
		if !atticCacheRE.MatchString(cache) {
			return "", fmt.Errorf("%q: want attic://<cache> or attic://<server>:<cache>, as `attic push` names them", rawURL)
		}
		return KindAttic, nil
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("%q: %w", rawURL, err)
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return "", fmt.Errorf("%q: want the cache's URL like http://cache.example.com:5000 (the token goes in token_file)", rawURL)
		}
		return KindHTTP, nil
	case "s3", "dir":
		return KindStorage, nil
	}
	return "", fmt.Errorf("%q: unknown scheme %q (want http://, https://, s3://bucket?endpoint=..., dir:///path or attic://<cache>)", rawURL, u.Scheme)
}

// Redact returns the URL without secrets, for logs and the API.
func Redact(rawURL string) string {
	if u, err := url.Parse(rawURL); err == nil && u.User != nil {
		return u.Redacted()
	}
	return rawURL
}

// upload is one store path ready to send: its narinfo and its compressed
// NAR in a temporary file.
type upload struct {
	info    *narinfo.NarInfo
	narFile string
}

// cacheTarget is a destination in the binary cache layout (http or storage).
type cacheTarget interface {
	// has reports whether the destination holds the path with this hash.
	has(ctx context.Context, hash string) (bool, error)
	// put sends the NAR and then the narinfo.
	put(ctx context.Context, u upload) error
}

// httpTarget is a cache that takes PUTs.
type httpTarget struct {
	base   string // no trailing slash
	token  string
	client *http.Client
}

func newHTTPTarget(d Destination) (*httpTarget, error) {
	t := &httpTarget{base: strings.TrimSuffix(d.URL, "/")}
	if d.TokenFile != "" {
		b, err := os.ReadFile(d.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("push destination %s: read token_file: %w", d.Name, err)
		}
		t.token = strings.TrimSpace(string(b))
		if t.token == "" || strings.ContainsAny(t.token, " \t\r\n") {
			return nil, fmt.Errorf("push destination %s: token_file %s must hold one token", d.Name, d.TokenFile)
		}
	}
	t.client = &http.Client{Transport: &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
		// The cache verifies a whole NAR before it answers the PUT.
		ResponseHeaderTimeout: 10 * time.Minute,
	}}
	return t, nil
}

func (t *httpTarget) request(ctx context.Context, method, p string, body io.Reader, size int64, contentType string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, t.base+"/"+p, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.ContentLength = size
		req.Header.Set("Content-Type", contentType)
	}
	if t.token != "" {
		req.Header.Set("Authorization", "Bearer "+t.token)
	}
	return t.client.Do(req)
}

func (t *httpTarget) has(ctx context.Context, hash string) (bool, error) {
	resp, err := t.request(ctx, http.MethodHead, hash+".narinfo", nil, 0, "")
	if err != nil {
		return false, fmt.Errorf("HEAD %s.narinfo: %w", hash, err)
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return true, nil
	case http.StatusNotFound:
		return false, nil
	}
	return false, fmt.Errorf("HEAD %s.narinfo: %s", hash, resp.Status)
}

func (t *httpTarget) put(ctx context.Context, u upload) error {
	f, err := os.Open(u.narFile)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := t.send(ctx, u.info.URL, f, int64(u.info.FileSize), "application/x-nix-nar"); err != nil {
		return err
	}
	text := u.info.String()
	return t.send(ctx, hashOf(u.info.StorePath)+".narinfo", strings.NewReader(text), int64(len(text)), narinfo.ContentType)
}

func (t *httpTarget) send(ctx context.Context, p string, body io.Reader, size int64, contentType string) error {
	resp, err := t.request(ctx, http.MethodPut, p, body, size, contentType)
	if err != nil {
		return fmt.Errorf("PUT %s: %w", p, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		return nil
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	hint := ""
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
		hint = " (check the destination's token_file: it must hold an upload token of that cache)"
	}
	return fmt.Errorf("PUT %s: %s: %s%s", p, resp.Status, strings.TrimSpace(string(msg)), hint)
}

// storageTarget writes the binary cache layout into an object store, opened
// on first use so a destination that is down does not stop the server.
type storageTarget struct {
	url       string
	opts      objstore.Options
	mu        sync.Mutex
	store     objstore.Store
	wroteInfo bool
}

func (t *storageTarget) open(ctx context.Context) (objstore.Store, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.store == nil {
		s, err := objstore.Open(ctx, t.url, t.opts)
		if err != nil {
			return nil, err
		}
		t.store = s
	}
	if !t.wroteInfo {
		// The layout's nix-cache-info, so the bucket is a cache other tools
		// can read as it is; an existing one is left alone.
		_, err := t.store.Stat(ctx, "nix-cache-info")
		if errors.Is(err, objstore.ErrNotFound) {
			info := "StoreDir: /nix/store\n"
			err = t.store.Put(ctx, "nix-cache-info", strings.NewReader(info), int64(len(info)), "text/x-nix-cache-info")
		}
		if err != nil {
			return nil, fmt.Errorf("nix-cache-info in %s: %w", t.store, err)
		}
		t.wroteInfo = true
	}
	return t.store, nil
}

func (t *storageTarget) has(ctx context.Context, hash string) (bool, error) {
	s, err := t.open(ctx)
	if err != nil {
		return false, err
	}
	_, err = s.Stat(ctx, hash+".narinfo")
	if errors.Is(err, objstore.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

func (t *storageTarget) put(ctx context.Context, u upload) error {
	s, err := t.open(ctx)
	if err != nil {
		return err
	}
	// The NAR first: a narinfo is never visible before its NAR. The NAR's
	// temporary file is moved into a directory store when it can be.
	return objstore.PutObjects(ctx, s, []objstore.Object{
		{Key: u.info.URL, ContentType: "application/zstd", File: u.narFile},
		{Key: hashOf(u.info.StorePath) + ".narinfo", ContentType: narinfo.ContentType, Data: []byte(u.info.String())},
	})
}

// atticPush runs `attic push <cache> <paths>`, which pushes the closures
// and skips what the cache holds. The attic client's own configuration
// (`attic login`) says where the server is and holds the token.
func atticPush(ctx context.Context, command, rawURL string, roots []string) error {
	bin, err := exec.LookPath(command)
	if err != nil {
		return fmt.Errorf("the attic client (%q) is not installed on this server: install it (nix profile install nixpkgs#attic-client) and run `attic login` as the server's user, or remove this [[push]] entry", command)
	}
	cache := strings.TrimPrefix(rawURL, "attic://")
	cmd := exec.CommandContext(ctx, bin, append([]string{"push", cache}, roots...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("attic push %s: %w: %s", cache, err, tail(string(out), 2000))
	}
	return nil
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return s
}
