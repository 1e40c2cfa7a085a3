package cache_test

// Uploads: the real Nix client pushes with `nix copy --to http://...`
// (netrc-file for the token) into a directory and into a real S3 server;
// a fresh store copies the paths back and verifies them.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/cache"
	"github.com/crystal-forge/crystal-forge/internal/http1"
	"github.com/crystal-forge/crystal-forge/internal/narinfo"
	"github.com/crystal-forge/crystal-forge/internal/nixbase32"
	"github.com/crystal-forge/crystal-forge/internal/objstore"
	"github.com/crystal-forge/crystal-forge/internal/signing"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
)

const uploadToken = "s3cr3t-upload-token"

func dirBackend(t *testing.T) objstore.Store {
	s, err := objstore.OpenDir(filepath.Join(t.TempDir(), "cache"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// uploadConfig is a cache over backend alone, taking uploads with uploadToken.
func uploadConfig(t *testing.T, backend objstore.Store) (cache.Config, string) {
	keyFile, pub := testsupport.NewCacheKey(t)
	tokens, err := cache.ParseTokens([]byte("# CI\nci:" + uploadToken + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	return cache.Config{
		Backend: backend,
		Keys:    []*signing.SecretKey{loadKey(t, keyFile)},
		Uploads: &cache.UploadConfig{Auth: tokens, StagingDir: t.TempDir()},
	}, pub
}

// netrc writes a netrc file giving token for 127.0.0.1.
func netrc(t *testing.T, token string) string {
	f := filepath.Join(t.TempDir(), "netrc")
	if err := os.WriteFile(f, []byte("machine 127.0.0.1\nlogin upload\npassword "+token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// nixPush runs `nix copy --to url` with the token in a netrc file.
func nixPush(ctx context.Context, t *testing.T, url, netrcFile string, paths ...string) *exec.Cmd {
	args := []string{"copy", "--to", url,
		"--option", "netrc-file", netrcFile,
		"--option", "narinfo-cache-negative-ttl", "0",
	}
	cmd := exec.CommandContext(ctx, "nix", append(args, paths...)...)
	cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+t.TempDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// bigPath builds a path holding a 64 MiB file of random bytes (nothing
// compresses it), deleted from the store when the test ends.
func bigPath(t *testing.T) string {
	file := filepath.Join(t.TempDir(), "big.nix")
	nonce := make([]byte, 8)
	rand.Read(nonce)
	expr := fmt.Sprintf(`derivation { name = "cf-upload-big"; nonce = "%x"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  args = [ "-e" "-c" "mkdir $out; /usr/bin/head -c 67108864 /dev/urandom > $out/big; echo small > $out/small" ]; }`, nonce)
	if err := os.WriteFile(file, []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := testsupport.NixOutput(t.Context(), "nix-build", "--no-out-link", file)
	if err != nil {
		t.Fatal(err)
	}
	p := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		// Tidying the shared store only; a path still in use stays.
		if _, err := testsupport.NixCommand(context.Background(), "nix-store", "--delete", p); err != nil {
			t.Logf("delete %s: %v", p, err)
		}
	})
	return p
}

// TestNixCopyTo pushes a closure with the real Nix client into each
// backend, then copies it back into a fresh store from the cache, with
// the cache's key the only trusted one.
func TestNixCopyTo(t *testing.T) {
	testsupport.RequireNix(t)
	c := testsupport.BuildClosure(t)
	big := bigPath(t)
	for name, open := range testsupport.StorageBackends() {
		t.Run(name, func(t *testing.T) {
			backend := open(t)
			cfg, pub := uploadConfig(t, backend)
			h := serveCache(t, cfg, "")
			rc := netrc(t, uploadToken)
			// Nix's default compression (xz) for the closure, zstd for
			// the big path.
			if out, err := nixPush(t.Context(), t, h.url, rc, c.Top).CombinedOutput(); err != nil {
				t.Fatalf("nix copy --to: %v\n%s", err, out)
			}
			if out, err := nixPush(t.Context(), t, h.url+"?compression=zstd", rc, big).CombinedOutput(); err != nil {
				t.Fatalf("nix copy --to (zstd): %v\n%s", err, out)
			}
			// Small NARs waited in memory, the big one in a file that is
			// now the object (or was copied into S3): nothing is left.
			if left, err := os.ReadDir(cfg.Uploads.StagingDir); err != nil || len(left) != 0 {
				t.Errorf("staging directory after the uploads: %v %v, want it empty", left, err)
			}
			got := testsupport.StoreKeys(t, backend)
			for _, p := range append(slices.Clone(c.All), big) {
				if !slices.Contains(got, hashPart(p)+".narinfo") {
					t.Errorf("backend lacks the narinfo of %s: %q", p, got)
				}
			}
			ni := h.narinfo(t, c.Leaf)
			if ni.Compression != "xz" || !strings.HasSuffix(ni.URL, ".nar.xz") {
				t.Errorf("leaf stored as %s at %s, want Nix's default xz", ni.Compression, ni.URL)
			}
			pk, err := signing.ParsePublicKey(pub)
			if err != nil {
				t.Fatal(err)
			}
			if !ni.Verify(pk) {
				t.Errorf("served narinfo is not signed by the cache's key: %v", ni.Sigs)
			}

			// Range and HEAD on a stored NAR file.
			bigInfo := h.narinfo(t, big)
			resp, body := h.do(t, http.MethodHead, "/"+bigInfo.URL, nil)
			if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(bigInfo.FileSize) || len(body) != 0 {
				t.Errorf("HEAD %s: %s, length %d; want 200, %d", bigInfo.URL, resp.Status, resp.ContentLength, bigInfo.FileSize)
			}
			whole := h.get(t, "/"+bigInfo.URL)
			resp, part := h.do(t, http.MethodGet, "/"+bigInfo.URL, http.Header{"Range": {"bytes=1000-1999"}})
			if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, whole[1000:2000]) {
				t.Errorf("Range GET: %s, %d bytes; want 206 and bytes 1000-1999", resp.Status, len(part))
			}

			dest := testsupport.NewLocalStore(t)
			if _, err := nixCopy(t, h.url, dest, pub, c.Top, big); err != nil {
				t.Fatal(err)
			}
			checkCopied(t, c, dest, pub)
			compareTrees(t, big, filepath.Join(dest, big))
		})
	}
}

// TestUploadRefused checks that bad uploads are refused and leave nothing
// behind.
func TestUploadRefused(t *testing.T) {
	testsupport.RequireNix(t)
	c := testsupport.BuildClosure(t)
	backend := dirBackend(t)
	cfg, _ := uploadConfig(t, backend)
	h := serveCache(t, cfg, "")
	before := testsupport.StoreKeys(t, backend) // nix-cache-info at most

	t.Run("wrong token", func(t *testing.T) {
		out, err := nixPush(t.Context(), t, h.url, netrc(t, "wrong"), c.Leaf).CombinedOutput()
		if err == nil {
			t.Fatalf("nix copy with a wrong token succeeded:\n%s", out)
		}
		if !strings.Contains(string(out), "401") {
			t.Errorf("nix copy output does not mention 401:\n%s", out)
		}
	})

	leafNar := testsupport.DumpNar(t, c.Leaf)
	leafInfo := localNarinfo(t, c.Leaf, leafNar)

	for _, tc := range []struct {
		name string
		auth string
		want int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"wrong bearer", "Bearer nope", http.StatusUnauthorized},
		{"wrong basic", "Basic " + basic("u", "nope"), http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := http.Header{}
			if tc.auth != "" {
				hdr.Set("Authorization", tc.auth)
			}
			for _, put := range []struct{ uri, body string }{
				{"/" + leafInfo.URL, string(leafNar)},
				{"/" + hashPart(c.Leaf) + ".narinfo", leafInfo.String()},
			} {
				resp, body := h.put(t, put.uri, hdr, put.body)
				if resp.StatusCode != tc.want {
					t.Errorf("PUT %s: %s %s, want %d", put.uri, resp.Status, body, tc.want)
				}
			}
		})
	}

	bearer := http.Header{"Authorization": {"Bearer " + uploadToken}}
	t.Run("tampered NAR", func(t *testing.T) {
		tampered := bytes.Clone(leafNar)
		i := bytes.Index(tampered, []byte("hello from the leaf"))
		tampered[i] = 'j'
		ni := localNarinfo(t, c.Leaf, tampered) // named by the tampered file's hash
		ni.NarHash = leafInfo.NarHash           // but claiming the real content
		if resp, body := h.put(t, "/"+ni.URL, bearer, string(tampered)); resp.StatusCode != http.StatusOK {
			t.Fatalf("PUT NAR: %s %s", resp.Status, body)
		}
		resp, body := h.put(t, "/"+hashPart(c.Leaf)+".narinfo", bearer, ni.String())
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "does not match") {
			t.Errorf("narinfo over a tampered NAR: %s %s; want 400 saying it does not match", resp.Status, body)
		}
	})

	t.Run("NAR whose name is not its hash", func(t *testing.T) {
		ni := localNarinfo(t, c.Middle, testsupport.DumpNar(t, c.Middle))
		resp, body := h.put(t, "/"+ni.URL, bearer, string(leafNar))
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("PUT of a NAR under another file's hash: %s %s; want 400", resp.Status, body)
		}
	})

	t.Run("missing reference", func(t *testing.T) {
		// middle refers to leaf, which is not in the cache (and the cache
		// serves no local store).
		nar := testsupport.DumpNar(t, c.Middle)
		ni := localNarinfo(t, c.Middle, nar)
		if resp, body := h.put(t, "/"+ni.URL, bearer, string(nar)); resp.StatusCode != http.StatusOK {
			t.Fatalf("PUT NAR: %s %s", resp.Status, body)
		}
		resp, body := h.put(t, "/"+hashPart(c.Middle)+".narinfo", bearer, ni.String())
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), c.Leaf) {
			t.Errorf("narinfo with a missing reference: %s %s; want 400 naming %s", resp.Status, body, c.Leaf)
		}
	})

	t.Run("narinfo without its NAR", func(t *testing.T) {
		resp, body := h.put(t, "/"+hashPart(c.Leaf)+".narinfo", bearer, leafInfo.String())
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "was not uploaded") {
			t.Errorf("narinfo without NAR: %s %s; want 400", resp.Status, body)
		}
	})

	t.Run("NAR cut off", func(t *testing.T) {
		// The client sends half the NAR and goes away.
		conn, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fmt.Fprintf(conn, "PUT /%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n", leafInfo.URL, uploadToken, len(leafNar)); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(leafNar[:len(leafNar)/2]); err != nil {
			t.Fatal(err)
		}
		conn.Close()
		// Once the server has given up on it, the narinfo finds no NAR.
		for {
			resp, body := h.put(t, "/"+hashPart(c.Leaf)+".narinfo", bearer, leafInfo.String())
			if resp.StatusCode == http.StatusBadRequest && strings.Contains(string(body), "was not uploaded") {
				break
			}
			if resp.StatusCode == http.StatusOK {
				t.Fatal("a narinfo was accepted over a NAR cut off half-way")
			}
			time.Sleep(10 * time.Millisecond)
		}
	})

	t.Run("too large", func(t *testing.T) {
		small := cfg
		up := *cfg.Uploads
		up.MaxNarBytes = 1024
		small.Uploads = &up
		hs := serveCache(t, small, "")
		resp, body := hs.put(t, "/"+leafInfo.URL, bearer, string(leafNar))
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("PUT of a NAR over the limit: %s %s; want 413", resp.Status, body)
		}
	})

	if after := testsupport.StoreKeys(t, backend); !slices.Equal(after, before) {
		t.Errorf("refused uploads changed the backend: %q, before %q", after, before)
	}
	for _, p := range c.All {
		if resp, _ := h.do(t, http.MethodHead, "/"+hashPart(p)+".narinfo", nil); resp.StatusCode != http.StatusNotFound {
			t.Errorf("HEAD narinfo of %s after refused uploads: %s", p, resp.Status)
		}
	}
}

// TestUploadKilled kills `nix copy --to` while it sends a NAR: no narinfo
// may appear, and the path stays invisible.
func TestUploadKilled(t *testing.T) {
	testsupport.RequireNix(t)
	big := bigPath(t)
	backend := dirBackend(t)
	cfg, _ := uploadConfig(t, backend)
	cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	srv, err := cache.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{}, 1)
	killed := make(chan struct{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http1.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/nar/") {
			// Hold the upload until the client is dead, so the body is
			// cut off whatever the timing.
			select {
			case started <- struct{}{}:
			default:
			}
			<-killed
		}
		srv.ServeHTTP(w, r)
	}), Logger: cfg.Logger}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	t.Cleanup(func() {
		if err := hs.Close(); err != nil {
			t.Errorf("close the cache server: %v", err)
		}
		if err := <-served; !errors.Is(err, http1.ErrServerClosed) {
			t.Errorf("cache server: Serve returned %v", err)
		}
	})
	url := "http://" + ln.Addr().String() + "?compression=none"

	cmd := nixPush(t.Context(), t, url, netrc(t, uploadToken), big)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-t.Context().Done():
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil {
		t.Fatal("nix copy succeeded although it was killed")
	}
	close(killed)

	// The server reads the cut-off body to its end and drops it; then a
	// narinfo for it finds nothing.
	ni := localNarinfo(t, big, testsupport.DumpNar(t, big))
	bearer := http.Header{"Authorization": {"Bearer " + uploadToken}}
	client := &http.Client{}
	for {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPut, "http://"+ln.Addr().String()+"/"+hashPart(big)+".narinfo", strings.NewReader(ni.String()))
		req.Header = bearer
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatalf("narinfo accepted after the NAR upload was killed; nix said:\n%s", &out)
		}
		if strings.Contains(string(body), "was not uploaded") {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, k := range testsupport.StoreKeys(t, backend) {
		if k != "nix-cache-info" {
			t.Errorf("the killed upload left %s in the backend", k)
		}
	}
}

// TestSignaturePolicy checks require-trusted: unsigned paths are refused,
// paths signed by a trusted key accepted (and signed by the cache too).
func TestSignaturePolicy(t *testing.T) {
	testsupport.RequireNix(t)
	c := testsupport.BuildClosure(t)
	trustedKey, _ := newKey(t)
	backend := dirBackend(t)
	cfg, pub := uploadConfig(t, backend)
	cfg.Uploads.Policy = cache.PolicyRequireTrusted
	cfg.Uploads.TrustedKeys = []*signing.PublicKey{trustedKey.Public()}
	h := serveCache(t, cfg, "")
	bearer := http.Header{"Authorization": {"Bearer " + uploadToken}}

	nar := testsupport.DumpNar(t, c.Leaf)
	ni := localNarinfo(t, c.Leaf, nar)
	if resp, body := h.put(t, "/"+ni.URL, bearer, string(nar)); resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT NAR: %s %s", resp.Status, body)
	}
	if resp, body := h.put(t, "/"+hashPart(c.Leaf)+".narinfo", bearer, ni.String()); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("unsigned narinfo under require-trusted: %s %s; want 403", resp.Status, body)
	}
	other, _ := newKey(t)
	ni.Sign(other)
	if resp, body := h.put(t, "/"+hashPart(c.Leaf)+".narinfo", bearer, ni.String()); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("narinfo signed by an untrusted key: %s %s; want 403", resp.Status, body)
	}
	ni.Sign(trustedKey)
	if resp, body := h.put(t, "/"+hashPart(c.Leaf)+".narinfo", bearer, ni.String()); resp.StatusCode != http.StatusOK {
		t.Fatalf("narinfo signed by a trusted key: %s %s; want 200", resp.Status, body)
	}
	served := h.narinfo(t, c.Leaf)
	ours, err := signing.ParsePublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if !served.Verify(ours) || !served.Verify(trustedKey.Public()) {
		t.Errorf("served narinfo should carry the uploader's and the cache's signatures: %v", served.Sigs)
	}
}

// TestLocalAndBackend serves the local store and a backend together: a
// path only in the backend and a path only in the store both copy.
func TestLocalAndBackend(t *testing.T) {
	testsupport.RequireNix(t)
	uploaded := testsupport.BuildClosure(t)
	local := testsupport.BuildClosure(t)
	backend := dirBackend(t)
	cfg, pub := uploadConfig(t, backend)
	up := serveCache(t, cfg, "")
	if out, err := nixPush(t.Context(), t, up.url, netrc(t, uploadToken), uploaded.Top).CombinedOutput(); err != nil {
		t.Fatalf("nix copy --to: %v\n%s", err, out)
	}
	// Keep a copy of the uploaded closure to compare with, then take it out
	// of the system store: only the backend has it now.
	keep := testsupport.NewLocalStore(t)
	if _, err := testsupport.NixCommand(t.Context(), "nix", "copy", "--no-check-sigs", "--to", keep, uploaded.Top); err != nil {
		t.Fatal(err)
	}
	if _, err := testsupport.NixCommand(t.Context(), append([]string{"nix-store", "--delete"}, uploaded.All...)...); err != nil {
		t.Fatal(err)
	}

	both := startCache(t, cache.Config{Backend: backend, Keys: cfg.Keys}, "") // system store + backend
	dest := testsupport.NewLocalStore(t)
	if _, err := nixCopy(t, both.url, dest, pub, uploaded.Top, local.Top); err != nil {
		t.Fatal(err)
	}
	checkCopied(t, local, dest, pub)
	for _, p := range uploaded.All {
		compareTrees(t, filepath.Join(keep, p), filepath.Join(dest, p))
	}
	if out, err := testsupport.NixCommand(t.Context(), "nix", "store", "verify", "--store", dest, "--all",
		"--option", "trusted-public-keys", pub); err != nil || strings.Contains(out, "untrusted") {
		t.Errorf("nix store verify: %v %s", err, out)
	}
}

// localNarinfo describes storePath as `nix copy` would upload it with
// compression none: URL named by the file's hash, unsigned.
func localNarinfo(t *testing.T, storePath string, nar []byte) *narinfo.NarInfo {
	info := closureInfo(t, "", storePath)[storePath]
	fh := sha256nix32(nar)
	narHash := "sha256:" + fh // compression none: the file is the NAR
	return &narinfo.NarInfo{
		StorePath:   storePath,
		URL:         "nar/" + fh + ".nar",
		Compression: "none",
		FileHash:    "sha256:" + fh,
		FileSize:    uint64(len(nar)),
		NarHash:     narHash,
		NarSize:     uint64(len(nar)),
		References:  info.References,
	}
}

func sha256nix32(b []byte) string {
	sum := sha256.Sum256(b)
	return nixbase32.Encode(sum[:])
}

func basic(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
}

// put sends a PUT with body.
func (h *harness) put(t *testing.T, uri string, header http.Header, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, h.url+uri, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	return resp, b
}
