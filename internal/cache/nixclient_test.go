package cache_test

// Integration tests: the cache serves the real system Nix store, and the
// real Nix client (nix copy, nix store verify) consumes it.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/crystal-forge/crystal-forge/internal/cache"
	"github.com/crystal-forge/crystal-forge/internal/http1"
	"github.com/crystal-forge/crystal-forge/internal/nar"
	"github.com/crystal-forge/crystal-forge/internal/narinfo"
	"github.com/crystal-forge/crystal-forge/internal/nixbase32"
	"github.com/crystal-forge/crystal-forge/internal/nixstore"
	"github.com/crystal-forge/crystal-forge/internal/signing"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// harness is a cache server on 127.0.0.1 over the system store, with a log
// of every response it sent.
type harness struct {
	url    string
	srv    *cache.Server
	client *http.Client // no transparent gzip: what is sent is what we see
	// acceptEncoding, when set, is added to NAR requests that carry no
	// Accept-Encoding. Nix 2.8 never sends the header (it only decodes a
	// Content-Encoding it is given), so this stands in for a client or a
	// proxy that asks for compressed transfers.
	acceptEncoding string

	mu        sync.Mutex
	responses []response
}

type response struct {
	method, uri string
	code        int    // 0: the handler panicked before answering
	encoding    string // Content-Encoding
	aborted     bool   // the handler panicked (an aborted stream, or a bug)
}

// startCache serves cfg (the system store unless cfg.Store is set) and
// fails the test if any response was a 5xx or an aborted stream.
func startCache(t *testing.T, cfg cache.Config, acceptEncoding string) *harness {
	t.Helper()
	if cfg.Store == nil {
		store, err := nixstore.Open(t.Context(), nixstore.Config{})
		if err != nil {
			t.Fatal(err)
		}
		testsupport.CloseAtCleanup(t, store)
		cfg.Store = store
	}
	return serveCache(t, cfg, acceptEncoding)
}

// serveCache serves cfg as it is (with no Store: the backend alone).
func serveCache(t *testing.T, cfg cache.Config, acceptEncoding string) *harness {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	}
	srv, err := cache.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{srv: srv, acceptEncoding: acceptEncoding}
	// The server the binaries use, so real Nix clients exercise it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http1.Server{Handler: h.wrap(srv), Logger: cfg.Logger}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	transport := &http.Transport{DisableCompression: true}
	t.Cleanup(func() {
		transport.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := hs.Shutdown(ctx); err != nil { // waits for the handlers
			t.Errorf("cache server shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, http1.ErrServerClosed) {
			t.Errorf("cache server: Serve returned %v", err)
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, r := range h.responses {
			if r.code >= 500 || r.aborted {
				t.Errorf("%s %s: status %d, aborted %v", r.method, r.uri, r.code, r.aborted)
			}
		}
	})
	h.url = "http://" + ln.Addr().String()
	h.client = &http.Client{Transport: transport}
	return h
}

func (h *harness) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h.acceptEncoding != "" && strings.HasPrefix(r.URL.Path, "/nar/") && r.Header.Get("Accept-Encoding") == "" {
			r.Header.Set("Accept-Encoding", h.acceptEncoding)
		}
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		aborted := true
		defer func() {
			code := sw.code
			if aborted && !sw.wroteHeader {
				code = 0 // panicked before answering
			}
			h.mu.Lock()
			h.responses = append(h.responses, response{
				method: r.Method, uri: r.URL.RequestURI(), code: code,
				encoding: w.Header().Get("Content-Encoding"), aborted: aborted,
			})
			h.mu.Unlock()
		}()
		next.ServeHTTP(sw, r)
		aborted = false
	})
}

// narResponses returns the logged answers to GETs of NAR URLs.
func (h *harness) narResponses() []response {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []response
	for _, r := range h.responses {
		if r.method == http.MethodGet && strings.HasPrefix(r.uri, "/nar/") {
			out = append(out, r)
		}
	}
	return out
}

// statusWriter notes the status code. It forwards ReadFrom so the server's
// sendfile path stays in use.
type statusWriter struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.code, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wroteHeader = true
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) ReadFrom(src io.Reader) (int64, error) {
	w.wroteHeader = true
	return w.ResponseWriter.(io.ReaderFrom).ReadFrom(src)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// do sends a request and returns the response with its whole body.
func (h *harness) do(t *testing.T, method, uri string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, h.url+uri, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, uri, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, uri, err)
	}
	return resp, body
}

// get is do for a GET that must answer 200.
func (h *harness) get(t *testing.T, uri string) []byte {
	t.Helper()
	resp, body := h.do(t, http.MethodGet, uri, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", uri, resp.Status, body)
	}
	return body
}

func (h *harness) narinfo(t *testing.T, storePath string) *narinfo.NarInfo {
	t.Helper()
	ni, err := narinfo.Parse(string(h.get(t, "/"+hashPart(storePath)+".narinfo")))
	if err != nil {
		t.Fatal(err)
	}
	return ni
}

func hashPart(storePath string) string { return path.Base(storePath)[:32] }

func loadKey(t *testing.T, file string) *signing.SecretKey {
	t.Helper()
	k, err := signing.LoadSecretKeyFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newKey returns a new secret key and its public key.
func newKey(t *testing.T) (*signing.SecretKey, string) {
	t.Helper()
	file, pub := testsupport.NewCacheKey(t)
	return loadKey(t, file), pub
}

// nixCopy copies paths from the cache into the local store at dest,
// trusting only trustedKeys. Each copy gets its own narinfo disk cache, so
// nothing is answered from an earlier run and concurrent copies do not trip
// over each other's SQLite writes.
func nixCopy(t *testing.T, url, dest, trustedKeys string, paths ...string) (string, error) {
	args := []string{"nix", "copy", "--from", url, "--to", dest,
		"--option", "trusted-public-keys", trustedKeys,
		"--option", "narinfo-cache-positive-ttl", "0",
		"--option", "narinfo-cache-negative-ttl", "0",
	}
	env := []string{"XDG_CACHE_HOME=" + t.TempDir()}
	return testsupport.NixCommandEnv(t.Context(), env, append(args, paths...)...)
}

type pathInfo struct {
	Path       string   `json:"path"`
	NarHash    string   `json:"narHash"`
	NarSize    uint64   `json:"narSize"`
	References []string `json:"references"`
	Signatures []string `json:"signatures"`
}

// closureInfo returns `nix path-info --json --recursive` of top in store
// ("" for the system store), by path.
func closureInfo(t *testing.T, store, top string) map[string]pathInfo {
	t.Helper()
	args := []string{"nix", "path-info", "--json", "--recursive"}
	if store != "" {
		args = append(args, "--store", store)
	}
	out, err := testsupport.NixOutput(t.Context(), append(args, top)...)
	if err != nil {
		t.Fatal(err)
	}
	var infos []pathInfo
	if err := json.Unmarshal(out, &infos); err != nil {
		t.Fatalf("nix path-info: %v\n%s", err, out)
	}
	m := make(map[string]pathInfo, len(infos))
	for _, i := range infos {
		slices.Sort(i.References)
		m[i.Path] = i
	}
	return m
}

// checkCopied asserts that dest holds c's closure exactly as the system
// store does, signed with pub.
func checkCopied(t *testing.T, c testsupport.Closure, dest, pub string) {
	t.Helper()
	want := closureInfo(t, "", c.Top)
	got := closureInfo(t, dest, c.Top)
	if len(got) != len(c.All) || len(want) != len(c.All) {
		t.Errorf("closure of %s has %d paths in the copy and %d in the system store, want %d", c.Top, len(got), len(want), len(c.All))
	}
	keyName, _, _ := strings.Cut(pub, ":")
	for _, p := range c.All {
		w, g := want[p], got[p]
		if g.Path != p || g.NarHash != w.NarHash || g.NarSize != w.NarSize || !slices.Equal(g.References, w.References) {
			t.Errorf("copied path info\n%+v\nwant\n%+v", g, w)
		}
		if !slices.ContainsFunc(g.Signatures, func(s string) bool { return strings.HasPrefix(s, keyName+":") }) {
			t.Errorf("copy of %s has signatures %v, none by %s", p, g.Signatures, keyName)
		}
		compareTrees(t, p, filepath.Join(dest, p))
	}
	// Contents match the NAR hashes and every path carries a signature by a
	// trusted key (copied paths are not "ultimately trusted").
	if out, err := testsupport.NixCommand(t.Context(), "nix", "store", "verify", "--store", dest, "--all",
		"--option", "trusted-public-keys", pub); err != nil {
		t.Errorf("nix store verify: %v", err)
	} else if strings.Contains(out, "untrusted") {
		t.Errorf("nix store verify: %s", out)
	}
}

// compareTrees asserts that the file trees at want and got are the same:
// names, types, executable bits, symlink targets and contents.
func compareTrees(t *testing.T, want, got string) {
	t.Helper()
	seen := 0
	err := filepath.WalkDir(want, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		seen++
		rel, _ := filepath.Rel(want, p)
		q := filepath.Join(got, rel)
		wi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		gi, err := os.Lstat(q)
		if err != nil {
			return err
		}
		if wi.Mode().Type() != gi.Mode().Type() || wi.Mode()&0o111 != gi.Mode()&0o111 {
			t.Errorf("%s: mode %v, want %v", q, gi.Mode(), wi.Mode())
			return nil
		}
		switch {
		case wi.Mode().IsRegular():
			a, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			b, err := os.ReadFile(q)
			if err != nil {
				return err
			}
			if !bytes.Equal(a, b) {
				t.Errorf("%s: %d bytes differ from %s (%d bytes)", q, len(b), p, len(a))
			}
		case wi.Mode()&fs.ModeSymlink != 0:
			a, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if b, err := os.Readlink(q); err != nil || a != b {
				t.Errorf("%s -> %q (%v), want %q", q, b, err, a)
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("compare %s with %s: %v", got, want, err)
	}
	n := 0
	if err := filepath.WalkDir(got, func(_ string, _ fs.DirEntry, err error) error { n++; return err }); err != nil {
		t.Errorf("count the files of %s: %v", got, err)
	}
	if n != seen {
		t.Errorf("%s has %d files, %s has %d", got, n, want, seen)
	}
}

func TestNixCopy(t *testing.T) {
	testsupport.RequireNix(t)
	c := testsupport.BuildClosure(t)
	// The fixture has what the copy checks are about.
	if fi, err := os.Lstat(filepath.Join(c.Leaf, testsupport.LeafExecutable)); err != nil || fi.Mode()&0o111 == 0 {
		t.Fatalf("fixture executable: %v %v", fi, err)
	}
	if fi, err := os.Lstat(filepath.Join(c.Leaf, testsupport.LeafLargeFile)); err != nil || fi.Size() < 1<<20 {
		t.Fatalf("fixture large file: %v %v", fi, err)
	}

	tests := []struct {
		name           string
		compression    string
		acceptEncoding string // added to NAR requests; see harness
		wantEncoding   string
	}{
		// What Nix 2.8 really does: no Accept-Encoding, so plain NARs.
		{"zstd/nix-default", cache.CompressionZstd, "", ""},
		// Nix decodes a Content-Encoding: zstd stream itself.
		{"zstd/accept-zstd", "", "zstd", "zstd"},
		{"none/accept-zstd", cache.CompressionNone, "zstd", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keyFile, pub := testsupport.NewCacheKey(t)
			h := startCache(t, cache.Config{Keys: []*signing.SecretKey{loadKey(t, keyFile)}, Compression: tt.compression}, tt.acceptEncoding)
			dest := testsupport.NewLocalStore(t)
			if _, err := nixCopy(t, h.url, dest, pub, c.Top); err != nil {
				t.Fatal(err)
			}
			checkCopied(t, c, dest, pub)

			nars := h.narResponses()
			if len(nars) < len(c.All) {
				t.Errorf("%d NAR downloads, want at least %d", len(nars), len(c.All))
			}
			for _, r := range nars {
				if r.code != http.StatusOK || r.encoding != tt.wantEncoding {
					t.Errorf("GET %s: status %d, Content-Encoding %q; want 200, %q", r.uri, r.code, r.encoding, tt.wantEncoding)
				}
			}
		})
	}

	t.Run("verify-checks-signatures", func(t *testing.T) {
		// The positive verify above means something only if verify
		// rejects paths signed by a key it does not trust.
		keyFile, pub := testsupport.NewCacheKey(t)
		h := startCache(t, cache.Config{Keys: []*signing.SecretKey{loadKey(t, keyFile)}}, "")
		dest := testsupport.NewLocalStore(t)
		if _, err := nixCopy(t, h.url, dest, pub, c.Top); err != nil {
			t.Fatal(err)
		}
		_, other := testsupport.NewCacheKey(t)
		out, err := testsupport.NixCommand(t.Context(), "nix", "store", "verify", "--store", dest, "--all", "--option", "trusted-public-keys", other)
		if err == nil || !strings.Contains(out, "is untrusted") {
			t.Errorf("nix store verify trusting another key: err %v, output %q; want paths reported untrusted", err, out)
		}
	})
}

func TestNixCopyUntrustedKey(t *testing.T) {
	testsupport.RequireNix(t)
	c := testsupport.BuildClosure(t)
	key, pub := newKey(t)
	name, _, _ := strings.Cut(pub, ":")
	sameName, err := signing.Generate(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, otherName := testsupport.NewCacheKey(t)
	tests := []struct {
		name, trusted string
	}{
		{"other key name", otherName},
		{"same key name, other key", sameName.Public().String()},
	}
	h := startCache(t, cache.Config{Keys: []*signing.SecretKey{key}}, "")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dest := testsupport.NewLocalStore(t)
			out, err := nixCopy(t, h.url, dest, tt.trusted, c.Top)
			if err == nil {
				t.Fatalf("nix copy trusting only %s succeeded:\n%s", tt.trusted, out)
			}
			if !strings.Contains(out, "lacks a valid signature") {
				t.Errorf("nix copy output does not say %q:\n%s", "lacks a valid signature", out)
			}
			if out, err := testsupport.NixCommand(t.Context(), "nix", "path-info", "--store", dest, c.Leaf); err == nil {
				t.Errorf("%s is valid in the destination after a refused copy:\n%s", c.Leaf, out)
			}
		})
	}
}

func TestNixCopyKeyRotation(t *testing.T) {
	testsupport.RequireNix(t)
	c := testsupport.BuildClosure(t)
	oldKey, oldPub := newKey(t)
	newKey, newPub := newKey(t)
	h := startCache(t, cache.Config{Keys: []*signing.SecretKey{oldKey, newKey}}, "")

	ni := h.narinfo(t, c.Top)
	if len(ni.Sigs) != 2 {
		t.Errorf("narinfo has signatures %v, want one per key", ni.Sigs)
	}
	for _, k := range []*signing.SecretKey{oldKey, newKey} {
		if !ni.Verify(k.Public()) {
			t.Errorf("narinfo is not signed by %s", k.Name)
		}
	}

	for _, tt := range []struct{ name, trusted string }{
		{"trust new key", newPub},
		{"trust old key", oldPub},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dest := testsupport.NewLocalStore(t)
			if _, err := nixCopy(t, h.url, dest, tt.trusted, c.Top); err != nil {
				t.Fatal(err)
			}
			checkCopied(t, c, dest, tt.trusted)
		})
	}
}

func TestNarRange(t *testing.T) {
	testsupport.RequireNix(t)
	c := testsupport.BuildClosure(t)
	key, _ := newKey(t)
	h := startCache(t, cache.Config{Keys: []*signing.SecretKey{key}}, "")
	ni := h.narinfo(t, c.Leaf)
	dump := testsupport.DumpNar(t, c.Leaf)
	size := int64(len(dump))
	if uint64(size) != ni.NarSize {
		t.Fatalf("nix-store --dump gives %d bytes, narinfo says NarSize %d", size, ni.NarSize)
	}
	large, err := os.ReadFile(filepath.Join(c.Leaf, testsupport.LeafLargeFile))
	if err != nil {
		t.Fatal(err)
	}
	largeAt := int64(bytes.Index(dump, large))

	tests := []struct {
		name     string
		rng      string
		wantCode int
		from, to int64 // expected slice of the dump, to exclusive
	}{
		{"first bytes", "bytes=100-4999", http.StatusPartialContent, 100, 5000},
		{"suffix", "bytes=-10", http.StatusPartialContent, size - 10, size},
		{"open end", fmt.Sprintf("bytes=%d-", size-3000), http.StatusPartialContent, size - 3000, size},
		{"inside the large file", fmt.Sprintf("bytes=%d-%d", largeAt+1000, largeAt+1_500_000), http.StatusPartialContent, largeAt + 1000, largeAt + 1_500_001},
		{"end past the size", fmt.Sprintf("bytes=%d-%d", size-5, size+100), http.StatusPartialContent, size - 5, size},
		{"suffix longer than the NAR", fmt.Sprintf("bytes=-%d", size+10), http.StatusPartialContent, 0, size},
		{"start at the size", fmt.Sprintf("bytes=%d-", size), http.StatusRequestedRangeNotSatisfiable, 0, 0},
		{"empty suffix", "bytes=-0", http.StatusRequestedRangeNotSatisfiable, 0, 0},
		{"malformed: whole NAR", "bytes=50-10", http.StatusOK, 0, size},
		{"multiple ranges: whole NAR", "bytes=0-1,5-6", http.StatusOK, 0, size},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := h.do(t, http.MethodGet, "/"+ni.URL, http.Header{"Range": {tt.rng}})
			if resp.StatusCode != tt.wantCode {
				t.Fatalf("Range %s: %s, want %d", tt.rng, resp.Status, tt.wantCode)
			}
			if enc := resp.Header.Get("Content-Encoding"); enc != "" {
				t.Errorf("Content-Encoding %q without Accept-Encoding", enc)
			}
			switch tt.wantCode {
			case http.StatusRequestedRangeNotSatisfiable:
				if got, want := resp.Header.Get("Content-Range"), fmt.Sprintf("bytes */%d", size); got != want {
					t.Errorf("Content-Range %q, want %q", got, want)
				}
				return
			case http.StatusPartialContent:
				if got, want := resp.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-%d/%d", tt.from, tt.to-1, size); got != want {
					t.Errorf("Content-Range %q, want %q", got, want)
				}
			}
			if got, want := resp.ContentLength, tt.to-tt.from; got != want {
				t.Errorf("Content-Length %d, want %d", got, want)
			}
			if !bytes.Equal(body, dump[tt.from:tt.to]) {
				t.Errorf("body (%d bytes) differs from bytes %d-%d of nix-store --dump", len(body), tt.from, tt.to-1)
			}
		})
	}
}

// TestNarContentEncoding checks the choice of on-the-fly compression for
// plain NAR URLs, and that a zstd stream decodes to the NAR.
func TestNarContentEncoding(t *testing.T) {
	testsupport.RequireNix(t)
	c := testsupport.BuildClosure(t)
	key, _ := newKey(t)
	servers := map[string]*harness{
		cache.CompressionZstd: startCache(t, cache.Config{Keys: []*signing.SecretKey{key}}, ""),
		cache.CompressionNone: startCache(t, cache.Config{Keys: []*signing.SecretKey{key}, Compression: cache.CompressionNone}, ""),
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	dumps := map[string][]byte{c.Leaf: testsupport.DumpNar(t, c.Leaf), c.Top: testsupport.DumpNar(t, c.Top)}
	// The small top path for the header variants (zstd is slow under -race).
	tests := []struct {
		compression, accept, want string
		path                      string
	}{
		{cache.CompressionZstd, "", "", c.Leaf},
		{cache.CompressionZstd, "gzip, deflate", "", c.Leaf},
		{cache.CompressionZstd, "zstd", "zstd", c.Leaf},
		{cache.CompressionZstd, "gzip, ZSTD", "zstd", c.Top},
		{cache.CompressionZstd, "br;q=1.0, zstd;q=0.5", "zstd", c.Top},
		{cache.CompressionZstd, "zstd;q=0", "", c.Top},
		{cache.CompressionNone, "zstd", "", c.Leaf},
	}
	for _, tt := range tests {
		t.Run(tt.compression+"/"+tt.accept+"/"+path.Base(tt.path), func(t *testing.T) {
			h := servers[tt.compression]
			dump := dumps[tt.path]
			ni := h.narinfo(t, tt.path)
			var hdr http.Header
			if tt.accept != "" {
				hdr = http.Header{"Accept-Encoding": {tt.accept}}
			}
			resp, body := h.do(t, http.MethodGet, "/"+ni.URL, hdr)
			if resp.StatusCode != http.StatusOK {
				t.Fatal(resp.Status)
			}
			if got := resp.Header.Get("Content-Encoding"); got != tt.want {
				t.Fatalf("Content-Encoding %q, want %q", got, tt.want)
			}
			if tt.want == "zstd" {
				if body, err = dec.DecodeAll(body, nil); err != nil {
					t.Fatalf("decode zstd: %v", err)
				}
				if !strings.Contains(resp.Header.Get("Vary"), "Accept-Encoding") {
					t.Errorf("Vary %q, want Accept-Encoding", resp.Header.Get("Vary"))
				}
			} else if resp.ContentLength != int64(len(dump)) {
				t.Errorf("Content-Length %d, want %d", resp.ContentLength, len(dump))
			}
			if !bytes.Equal(body, dump) {
				t.Errorf("NAR (%d bytes) differs from nix-store --dump (%d bytes)", len(body), len(dump))
			}
		})
	}
}

// TestCompressedNarURLs fetches /nar/<storehash>.nar[.zst|.xz].
func TestCompressedNarURLs(t *testing.T) {
	testsupport.RequireNix(t)
	c := testsupport.BuildClosure(t)
	key, _ := newKey(t)
	h := startCache(t, cache.Config{Keys: []*signing.SecretKey{key}}, "")
	unzstd := func(b []byte) ([]byte, error) {
		d, err := zstd.NewReader(nil)
		if err != nil {
			return nil, err
		}
		defer d.Close()
		return d.DecodeAll(b, nil)
	}
	unxz := func(b []byte) ([]byte, error) {
		r, err := xz.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		return io.ReadAll(r)
	}
	tests := []struct {
		suffix, contentType string
		decode              func([]byte) ([]byte, error)
	}{
		{".nar", "application/x-nix-nar", func(b []byte) ([]byte, error) { return b, nil }},
		{".nar.zst", "application/zstd", unzstd},
		{".nar.xz", "application/x-xz", unxz},
	}
	for _, p := range []string{c.Leaf, c.Top} {
		dump := testsupport.DumpNar(t, p)
		for _, tt := range tests {
			t.Run(path.Base(p)+tt.suffix, func(t *testing.T) {
				resp, body := h.do(t, http.MethodGet, "/nar/"+hashPart(p)+tt.suffix, nil)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("%s: %s", tt.suffix, resp.Status)
				}
				if got := resp.Header.Get("Content-Type"); got != tt.contentType {
					t.Errorf("Content-Type %q, want %q", got, tt.contentType)
				}
				got, err := tt.decode(body)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, dump) {
					t.Errorf("decoded NAR (%d bytes) differs from nix-store --dump (%d bytes)", len(got), len(dump))
				}
			})
		}
	}
}

func TestHead(t *testing.T) {
	testsupport.RequireNix(t)
	c := testsupport.BuildClosure(t)
	key, _ := newKey(t)
	h := startCache(t, cache.Config{Keys: []*signing.SecretKey{key}}, "")
	ni := h.narinfo(t, c.Leaf)
	tests := []struct {
		name     string
		uri      string
		accept   string
		wantCode int
		wantEnc  string
	}{
		{"cache info", "/nix-cache-info", "", http.StatusOK, ""},
		{"narinfo", "/" + hashPart(c.Leaf) + ".narinfo", "", http.StatusOK, ""},
		{"listing", "/" + hashPart(c.Leaf) + ".ls", "", http.StatusOK, ""},
		{"unknown narinfo", "/" + unknownHash() + ".narinfo", "", http.StatusNotFound, ""},
		{"NAR", "/" + ni.URL, "", http.StatusOK, ""},
		{"NAR, zstd accepted", "/" + ni.URL, "zstd", http.StatusOK, "zstd"},
		{"NAR by store hash", "/nar/" + hashPart(c.Leaf) + ".nar", "", http.StatusOK, ""},
		{"log", "/log/" + path.Base(c.Derivers[c.Leaf]), "", http.StatusOK, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hdr http.Header
			if tt.accept != "" {
				hdr = http.Header{"Accept-Encoding": {tt.accept}}
			}
			head, _ := h.do(t, http.MethodHead, tt.uri, hdr)
			get, body := h.do(t, http.MethodGet, tt.uri, hdr)
			if head.StatusCode != tt.wantCode || get.StatusCode != tt.wantCode {
				t.Fatalf("HEAD %s, GET %s; want %d", head.Status, get.Status, tt.wantCode)
			}
			if got := head.Header.Get("Content-Encoding"); got != tt.wantEnc {
				t.Errorf("HEAD Content-Encoding %q, want %q", got, tt.wantEnc)
			}
			for _, k := range []string{"Content-Type", "Content-Encoding", "Cache-Control"} {
				if head.Header.Get(k) != get.Header.Get(k) {
					t.Errorf("%s: HEAD %q, GET %q", k, head.Header.Get(k), get.Header.Get(k))
				}
			}
			if cl := head.Header.Get("Content-Length"); cl != "" && tt.wantCode == http.StatusOK {
				if cl != strconv.Itoa(len(body)) {
					t.Errorf("HEAD Content-Length %s, GET body is %d bytes", cl, len(body))
				}
			} else if tt.wantCode == http.StatusOK && tt.wantEnc == "" && !strings.HasPrefix(tt.uri, "/log/") {
				t.Errorf("HEAD has no Content-Length")
			}
			// net/http drops a HEAD body on the wire, so look at what the
			// handler itself writes.
			req := httptest.NewRequestWithContext(t.Context(), http.MethodHead, tt.uri, nil)
			if tt.accept != "" {
				req.Header.Set("Accept-Encoding", tt.accept)
			}
			rec := httptest.NewRecorder()
			h.srv.ServeHTTP(rec, req)
			if rec.Code != tt.wantCode {
				t.Errorf("handler answered HEAD with %d, want %d", rec.Code, tt.wantCode)
			}
			if rec.Code == http.StatusOK && rec.Body.Len() != 0 {
				t.Errorf("handler wrote %d body bytes for HEAD", rec.Body.Len())
			}
		})
	}
}

// TestConcurrentClients runs HTTP clients and nix copies against one
// server at once.
func TestConcurrentClients(t *testing.T) {
	testsupport.RequireNix(t)
	c := testsupport.BuildClosure(t)
	key, pub := newKey(t)
	h := startCache(t, cache.Config{Keys: []*signing.SecretKey{key}}, "")
	dumps := make(map[string][]byte)
	for _, p := range c.All {
		dumps[p] = testsupport.DumpNar(t, p)
	}
	dests := make([]string, 3)
	for i := range dests {
		dests[i] = testsupport.NewLocalStore(t)
	}

	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			dec, err := zstd.NewReader(nil)
			if err != nil {
				t.Error(err)
				return
			}
			defer dec.Close()
			for i := range 3 {
				for _, p := range c.All {
					// zstd for every other fetch; of the big leaf only in
					// two clients, as compressing it is slow under -race.
					useZstd := (g+i)%2 == 0 && (p != c.Leaf || g%8 == 0 && i == 0)
					if err := fetchAndCheck(t.Context(), h, dec, p, dumps[p], useZstd); err != nil {
						t.Errorf("client %d: %v", g, err)
						return
					}
				}
			}
		})
	}
	for _, dest := range dests {
		wg.Go(func() {
			if _, err := nixCopy(t, h.url, dest, pub, c.Top); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, dest := range dests {
		checkCopied(t, c, dest, pub)
	}
}

// fetchAndCheck fetches the narinfo and the NAR of p, raw or zstd, and
// compares them with the store. It returns errors: it runs off the test's
// goroutine.
func fetchAndCheck(ctx context.Context, h *harness, dec *zstd.Decoder, p string, dump []byte, useZstd bool) error {
	get := func(uri, accept string) (*http.Response, []byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url+uri, nil)
		if err != nil {
			return nil, nil, err
		}
		if accept != "" {
			req.Header.Set("Accept-Encoding", accept)
		}
		resp, err := h.client.Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("GET %s: %s", uri, resp.Status)
		}
		return resp, body, err
	}
	_, body, err := get("/"+hashPart(p)+".narinfo", "")
	if err != nil {
		return err
	}
	ni, err := narinfo.Parse(string(body))
	if err != nil {
		return err
	}
	if ni.StorePath != p || ni.NarSize != uint64(len(dump)) {
		return fmt.Errorf("narinfo of %s says %s, %d bytes", p, ni.StorePath, ni.NarSize)
	}
	accept := ""
	if useZstd {
		accept = "zstd"
	}
	resp, body, err := get("/"+ni.URL, accept)
	if err != nil {
		return err
	}
	if resp.Header.Get("Content-Encoding") != accept {
		return fmt.Errorf("NAR of %s: Content-Encoding %q, want %q", p, resp.Header.Get("Content-Encoding"), accept)
	}
	if useZstd {
		if body, err = dec.DecodeAll(body, nil); err != nil {
			return fmt.Errorf("NAR of %s: %w", p, err)
		}
	}
	if !bytes.Equal(body, dump) {
		return fmt.Errorf("NAR of %s: %d bytes differ from nix-store --dump", p, len(body))
	}
	return nil
}

func TestListing(t *testing.T) {
	testsupport.RequireNix(t)
	c := testsupport.BuildClosure(t)
	key, _ := newKey(t)
	h := startCache(t, cache.Config{Keys: []*signing.SecretKey{key}}, "")
	dump := testsupport.DumpNar(t, c.Leaf)
	var l nar.Listing
	if err := json.Unmarshal(h.get(t, "/"+hashPart(c.Leaf)+".ls"), &l); err != nil {
		t.Fatal(err)
	}
	if l.Version != 1 || l.Root == nil || l.Root.Type != "directory" {
		t.Fatalf("listing: version %d, root %+v", l.Version, l.Root)
	}
	lookup := func(rel string) *nar.Entry {
		e := l.Root
		for part := range strings.SplitSeq(rel, "/") {
			if e == nil {
				break
			}
			e = e.Entries[part]
		}
		if e == nil {
			t.Fatalf("listing has no %s", rel)
		}
		return e
	}
	for _, tt := range []struct {
		rel        string
		executable bool
	}{
		{testsupport.LeafLargeFile, false},
		{testsupport.LeafTextFile, false},
		{testsupport.LeafExecutable, true},
		{testsupport.LeafEmptyFile, false},
	} {
		e := lookup(tt.rel)
		want, err := os.ReadFile(filepath.Join(c.Leaf, tt.rel))
		if err != nil {
			t.Fatal(err)
		}
		if e.Type != "regular" || e.Size == nil || e.NarOffset == nil || e.Executable != tt.executable {
			t.Errorf("%s: %+v", tt.rel, e)
			continue
		}
		if *e.Size != int64(len(want)) {
			t.Errorf("%s: size %d, want %d", tt.rel, *e.Size, len(want))
		}
		if off := *e.NarOffset; off < 0 || off+*e.Size > int64(len(dump)) || !bytes.Equal(dump[off:off+*e.Size], want) {
			t.Errorf("%s: narOffset %d does not point to the file's bytes in the NAR", tt.rel, off)
		}
	}
	if e := lookup(testsupport.LeafSymlink); e.Type != "symlink" || e.Target != testsupport.LeafSymlinkTarget {
		t.Errorf("%s: %+v", testsupport.LeafSymlink, e)
	}
}

func TestBuildLog(t *testing.T) {
	testsupport.RequireNix(t)
	c := testsupport.BuildClosure(t)
	key, _ := newKey(t)
	h := startCache(t, cache.Config{Keys: []*signing.SecretKey{key}}, "")
	for _, p := range []string{c.Leaf, c.Top} {
		for _, name := range []string{path.Base(c.Derivers[p]), path.Base(p)} {
			t.Run(name, func(t *testing.T) {
				resp, body := h.do(t, http.MethodGet, "/log/"+name, nil)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("%s: %s", resp.Status, body)
				}
				if !strings.Contains(string(body), c.LogLine(p)) {
					t.Errorf("log %q does not contain %q", body, c.LogLine(p))
				}
				if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
					t.Errorf("Content-Type %q", ct)
				}
			})
		}
	}
}

// TestHostileRequests: malformed names, traversal attempts and unknown
// paths are 404s (never 500s: startCache checks every response).
func TestHostileRequests(t *testing.T) {
	testsupport.RequireNix(t)
	c := testsupport.BuildClosure(t)
	key, _ := newKey(t)
	h := startCache(t, cache.Config{Keys: []*signing.SecretKey{key}}, "")
	leaf, middle := h.narinfo(t, c.Leaf), h.narinfo(t, c.Middle)
	leafNarHash := strings.TrimPrefix(leaf.NarHash, "sha256:")
	middleNarHash := strings.TrimPrefix(middle.NarHash, "sha256:")
	unknown := unknownHash()
	for _, uri := range []string{
		"/not-a-hash.narinfo",
		"/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo",
		"/..%2F..%2Fetc%2Fpasswd.narinfo",
		"/..%2F..%2Fetc%2Fpasswd",
		"/%00.narinfo",
		"/" + strings.Repeat("a", 4000) + ".narinfo",
		"/" + hashPart(c.Leaf) + ".narinfo.bak",
		"/" + hashPart(c.Leaf),
		"/" + unknown + ".narinfo",
		"/" + unknown + ".ls",
		"/" + strings.ToUpper(hashPart(c.Leaf)) + ".narinfo",
		"/nar/../../etc/passwd",
		"/nar/..%2F..%2Fetc%2Fpasswd.nar",
		"/nar/" + leafNarHash + ".nar?hash=../../x",
		"/nar/" + leafNarHash + ".nar?hash=" + unknown,
		"/nar/" + middleNarHash + ".nar?hash=" + hashPart(c.Leaf),    // narhash of another path
		"/nar/" + leafNarHash[:51] + ".nar?hash=" + hashPart(c.Leaf), // nixbase32.Decode used to panic on this
		"/nar/" + leafNarHash[:1] + ".nar?hash=" + hashPart(c.Leaf),
		"/nar/" + leafNarHash + "0.nar?hash=" + hashPart(c.Leaf),
		"/nar/" + leafNarHash + "e.nar?hash=" + hashPart(c.Leaf),
		"/nar/" + strings.Repeat("z", 52) + ".nar?hash=" + hashPart(c.Leaf), // 52 characters that overflow 256 bits
		"/nar/" + unknown + ".nar",
		"/nar/" + unknown + ".nar.zst",
		"/nar/" + hashPart(c.Leaf) + ".nar.gz",
		"/nar/" + hashPart(c.Leaf),
		"/log/../../etc/passwd",
		"/log/..%2F..%2Fetc%2Fpasswd",
		"/log/" + unknown + "-x.drv",
		"/log/" + unknown + "-x",
		"/log/" + path.Base(c.Derivers[c.Leaf]) + "%2F..%2F..%2Fx.drv",
		"/no-such-file",
	} {
		t.Run(uri, func(t *testing.T) {
			// Paths are not cleaned: a ".." segment is no store name.
			resp, body := h.do(t, http.MethodGet, uri, nil)
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("GET %s: %s, want 404: %.200q", uri, resp.Status, body)
			}
		})
	}
}

// TestMethods: the cache is read-only; other methods are 405 with Allow.
func TestMethods(t *testing.T) {
	testsupport.RequireNix(t)
	key, _ := newKey(t)
	h := startCache(t, cache.Config{Keys: []*signing.SecretKey{key}}, "")
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, "PURGE"} {
		resp, _ := h.do(t, method, "/nix-cache-info", nil)
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
			t.Errorf("%s: %s, Allow %q; want 405 with Allow: GET, HEAD", method, resp.Status, resp.Header.Get("Allow"))
		}
	}
	if resp, _ := h.do(t, http.MethodHead, "/nix-cache-info", nil); resp.StatusCode != http.StatusOK {
		t.Errorf("HEAD: %s", resp.Status)
	}
}

// unknownHash returns a valid store hash that names no path.
func unknownHash() string {
	b := make([]byte, 20)
	rand.Read(b)
	return nixbase32.Encode(b)
}

func TestHealthAndMetrics(t *testing.T) {
	testsupport.RequireNix(t)
	c := testsupport.BuildClosure(t)
	key, _ := newKey(t)
	h := startCache(t, cache.Config{Keys: []*signing.SecretKey{key}}, "")

	resp, body := h.do(t, http.MethodGet, "/health", nil)
	var health struct{ Status string }
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &health) != nil || health.Status != "healthy" {
		t.Errorf("/health: %s %q", resp.Status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("/health Content-Type %q", ct)
	}

	// Small responses only: they stay in net/http's buffer until the
	// handler, and so its metrics, is done.
	for _, p := range c.All {
		h.narinfo(t, p)
	}
	h.do(t, http.MethodGet, "/"+unknownHash()+".narinfo", nil)
	topNar := h.get(t, "/"+h.narinfo(t, c.Top).URL)
	h.get(t, "/nix-cache-info")

	metrics := string(h.get(t, "/metrics"))
	for _, tt := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"crystal_forge_cache_requests_total", []string{`endpoint="narinfo"`, `code="200"`}, 4},
		{"crystal_forge_cache_requests_total", []string{`endpoint="narinfo"`, `code="404"`}, 1},
		{"crystal_forge_cache_requests_total", []string{`endpoint="nar"`, `code="200"`}, 1},
		{"crystal_forge_cache_requests_total", []string{`endpoint="nix-cache-info"`, `code="200"`}, 1},
		{"crystal_forge_cache_requests_total", []string{`endpoint="health"`, `code="200"`}, 1},
		{"crystal_forge_cache_response_bytes_total", []string{`endpoint="nar"`}, float64(len(topNar))},
		{"crystal_forge_cache_request_duration_seconds_count", []string{`endpoint="nar"`}, 1},
	} {
		got, ok := metricValue(metrics, tt.name, tt.labels...)
		if !ok || got != tt.want {
			t.Errorf("%s%v = %v (found %v), want %v", tt.name, tt.labels, got, ok, tt.want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", metrics)
	}
}

// metricValue finds the sample of name whose labels include all of labels
// in Prometheus' text format.
func metricValue(text, name string, labels ...string) (float64, bool) {
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name+"{")
		if !ok {
			continue
		}
		lbls, value, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		have := strings.Split(lbls, ",")
		if !all(labels, func(l string) bool { return slices.Contains(have, l) }) {
			continue
		}
		v, err := strconv.ParseFloat(strings.Fields(value)[0], 64)
		return v, err == nil
	}
	return 0, false
}

func all[T any](s []T, f func(T) bool) bool {
	for _, v := range s {
		if !f(v) {
			return false
		}
	}
	return true
}

func TestCacheInfo(t *testing.T) {
	testsupport.RequireNix(t)
	k1, pub1 := newKey(t)
	k2, pub2 := newKey(t)
	tests := []struct {
		name     string
		keys     []*signing.SecretKey
		priority int
		want     string
	}{
		{"one key", []*signing.SecretKey{k1}, 40, "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\nPublicKeys: " + pub1 + "\n"},
		{"two keys", []*signing.SecretKey{k1, k2}, 10, "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 10\nPublicKeys: " + pub1 + " " + pub2 + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startCache(t, cache.Config{Keys: tt.keys, Priority: tt.priority}, "")
			resp, body := h.do(t, http.MethodGet, "/nix-cache-info", nil)
			if resp.StatusCode != http.StatusOK || string(body) != tt.want {
				t.Errorf("/nix-cache-info: %s\n%s\nwant\n%s", resp.Status, body, tt.want)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "text/x-nix-cache-info" {
				t.Errorf("Content-Type %q", ct)
			}
			// Nix itself reads it: `nix store ping` fetches nix-cache-info.
			if _, err := testsupport.NixCommand(t.Context(), "nix", "store", "ping", "--store", h.url); err != nil {
				t.Error(err)
			}
		})
	}
}
