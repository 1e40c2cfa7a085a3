package push_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/cache"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/nixstore"
	"github.com/crystal-forge/crystal-forge/internal/objstore"
	"github.com/crystal-forge/crystal-forge/internal/push"
	"github.com/crystal-forge/crystal-forge/internal/signing"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
)

func TestKindOf(t *testing.T) {
	tests := []struct {
		url  string
		kind push.Kind
		ok   bool
	}{
		{"http://cache.example.com:5000", push.KindHTTP, true},
		{"https://cache.example.com/", push.KindHTTP, true},
		{"http://user:pw@cache.example.com", "", false},
		{"http://", "", false},
		{"s3://bucket?endpoint=http://127.0.0.1:9000&region=us-east-1", push.KindStorage, true},
		{"dir:///srv/cache", push.KindStorage, true},
		{"attic://main", push.KindAttic, true},
		{"attic://server:main", push.KindAttic, true},
		{"attic://-rf", "", false},
		{"attic://a b", "", false},
		{"ftp://x", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		k, err := push.KindOf(tt.url)
		if (err == nil) != tt.ok || k != tt.kind {
			t.Errorf("KindOf(%q) = %q, %v; want %q, ok=%v", tt.url, k, err, tt.kind, tt.ok)
		}
	}
}

// rig is a database with one build whose outputs are pushed, and the
// store they are in.
type rig struct {
	db      *db.DB
	store   *nixstore.Store
	key     *signing.SecretKey
	buildID int64
}

func newRig(t *testing.T) *rig {
	t.Helper()
	d, err := db.Open(t.Context(), filepath.Join(t.TempDir(), "cf.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	st, err := nixstore.Open(t.Context(), nixstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	b, _, err := d.CreateBuild(t.Context(), "repo", "test", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	key, err := signing.Generate("cf-push-test", nil)
	if err != nil {
		t.Fatal(err)
	}
	return &rig{db: d, store: st, key: key, buildID: b.ID}
}

func (r *rig) service(t *testing.T, dests []push.Destination, getenv func(string) string) *push.Service {
	t.Helper()
	s, err := push.New(push.Config{
		DB: r.db, Store: r.store, Keys: []*signing.SecretKey{r.key}, Destinations: dests,
		Attempts: 3, Backoff: time.Millisecond, TempDir: t.TempDir(), Getenv: getenv,
		AtticCommand: "attic-not-installed-" + testsupport.Nonce(),
		Logger:       slog.New(slog.NewTextHandler(t.Output(), nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	return s
}

// pushAndWait pushes roots to every destination and returns the finished
// jobs by destination.
func (r *rig) pushAndWait(t *testing.T, s *push.Service, roots ...string) map[string]*db.PushJob {
	t.Helper()
	jobs, err := s.Push(t.Context(), r.buildID, roots)
	if err != nil {
		t.Fatal(err)
	}
	s.Wait()
	out := map[string]*db.PushJob{}
	for _, j := range jobs {
		got, err := r.db.Push(t.Context(), j.ID)
		if err != nil {
			t.Fatal(err)
		}
		out[got.Destination] = got
	}
	return out
}

// receivingCache is a second Crystal Forge cache (without a local store,
// so it holds only what is pushed) taking uploads with token.
func receivingCache(t *testing.T, backend objstore.Store, token string) (string, *signing.SecretKey) {
	t.Helper()
	key, err := signing.Generate("cf-receiver", nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := cache.Config{Backend: backend, StoreDir: "/nix/store", Keys: []*signing.SecretKey{key}, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))}
	if token != "" {
		tokens, err := cache.ParseTokens([]byte("ci:" + token + "\n"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Uploads = &cache.UploadConfig{Auth: tokens, StagingDir: t.TempDir()}
	}
	srv, err := cache.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	return hs.URL, key
}

// copyBack copies top's closure from url into a fresh store, trusting only
// pub, and checks it with nix store verify.
func copyBack(t *testing.T, url, pub string, c testsupport.Closure) {
	t.Helper()
	dest := testsupport.NewLocalStore(t)
	env := []string{"XDG_CACHE_HOME=" + t.TempDir()}
	if out, err := testsupport.NixCommandEnv(t.Context(), env, "nix", "copy", "--from", url, "--to", dest,
		"--option", "trusted-public-keys", pub, "--option", "narinfo-cache-negative-ttl", "0", c.Top); err != nil {
		t.Fatalf("nix copy --from %s: %v\n%s", url, err, out)
	}
	for _, p := range c.All {
		if _, err := os.Lstat(filepath.Join(dest, p)); err != nil {
			t.Errorf("%s was not copied back: %v", p, err)
		}
	}
	if out, err := testsupport.NixCommand(t.Context(), "nix", "store", "verify", "--store", dest, "--all", "--option", "trusted-public-keys", pub); err != nil || strings.Contains(out, "untrusted") {
		t.Errorf("nix store verify: %v\n%s", err, out)
	}
}

func TestPushToCacheAndS3(t *testing.T) {
	testsupport.RequireNix(t)
	s3 := testsupport.StartS3(t)
	bucket := s3.NewBucket(t)
	c := testsupport.BuildClosure(t)
	r := newRig(t)

	token := "tok-" + testsupport.Nonce()
	cacheDir, err := objstore.OpenDir(filepath.Join(t.TempDir(), "received"))
	if err != nil {
		t.Fatal(err)
	}
	cacheURL, _ := receivingCache(t, cacheDir, token)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dests := []push.Destination{
		{Name: "central", URL: cacheURL, TokenFile: tokenFile},
		{Name: "bucket", URL: s3.URL(bucket)},
	}
	s := r.service(t, dests, s3.Getenv)
	jobs := r.pushAndWait(t, s, c.Top)
	for _, name := range []string{"central", "bucket"} {
		j := jobs[name]
		if j == nil {
			t.Fatalf("no push job for %s: %v", name, jobs)
		}
		if j.State != db.PushSucceeded || j.Error != "" || j.Attempts != 1 || j.Paths != len(c.All) || j.Uploaded != len(c.All) || j.Bytes <= 0 ||
			j.FinishedAt == nil || len(j.Roots) != 1 || j.Roots[0] != c.Top {
			t.Errorf("push to %s: %+v", name, j)
		}
	}

	pub := r.key.Public().String()
	// The receiving cache serves what it got, signed by the pushing
	// server's key (kept) as well as its own.
	copyBack(t, cacheURL, pub, c)
	// The bucket, served by a read-only cache over it.
	s3store, err := objstore.Open(t.Context(), s3.URL(bucket), objstore.Options{Getenv: s3.Getenv})
	if err != nil {
		t.Fatal(err)
	}
	s3URL, _ := receivingCache(t, s3store, "")
	copyBack(t, s3URL, pub, c)
	if _, err := s3store.Stat(t.Context(), "nix-cache-info"); err != nil {
		t.Errorf("bucket has no nix-cache-info: %v", err)
	}

	// Pushed again: everything is there already, nothing is sent.
	again := r.pushAndWait(t, s, c.Top)
	for name, j := range again {
		if j.State != db.PushSucceeded || j.Uploaded != 0 || j.Bytes != 0 || j.Paths != len(c.All) {
			t.Errorf("second push to %s: %+v", name, j)
		}
	}
}

func TestPushFailures(t *testing.T) {
	testsupport.RequireNix(t)
	c := testsupport.BuildClosure(t)
	r := newRig(t)

	// A cache that takes uploads, with another token than ours.
	cacheDir, err := objstore.OpenDir(filepath.Join(t.TempDir(), "received"))
	if err != nil {
		t.Fatal(err)
	}
	cacheURL, _ := receivingCache(t, cacheDir, "right-"+testsupport.Nonce())
	wrongToken := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(wrongToken, []byte("wrong"), 0o600); err != nil {
		t.Fatal(err)
	}
	down := fmt.Sprintf("http://127.0.0.1:%d", testsupport.FreeTCPPort(t))
	dests := []push.Destination{
		{Name: "down", URL: down},
		{Name: "wrong-token", URL: cacheURL, TokenFile: wrongToken},
		{Name: "attic", URL: "attic://main"},
	}
	s := r.service(t, dests, nil)
	jobs := r.pushAndWait(t, s, c.Top)
	for name, want := range map[string]string{
		"down":        "connection refused",
		"wrong-token": "401",
		"attic":       "is not installed",
	} {
		j := jobs[name]
		if j == nil {
			t.Fatalf("no push job for %s", name)
		}
		if j.State != db.PushFailed || j.Attempts != 3 || !strings.Contains(j.Error, want) || j.Uploaded != 0 || j.FinishedAt == nil {
			t.Errorf("push to %s: state %s, %d attempts, %d uploaded, error %q; want failed after 3 attempts with %q", name, j.State, j.Attempts, j.Uploaded, j.Error, want)
		}
	}
	// Nothing became visible in the cache that refused the token.
	n := 0
	err = cacheDir.List(t.Context(), "", func(i objstore.Info) error {
		if i.Key != "nix-cache-info" {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d objects stored by pushes that were refused", n)
	}

	// A path that is not in the store fails the push, saying so.
	gone := "/nix/store/" + strings.Repeat("0", 32) + "-gone"
	s2 := r.service(t, []push.Destination{{Name: "down", URL: down}}, nil)
	jobs = r.pushAndWait(t, s2, gone)
	if j := jobs["down"]; j == nil || j.State != db.PushFailed || !strings.Contains(j.Error, "not in this server's store") {
		t.Errorf("push of a path not in the store: %+v", j)
	}
}

func TestResumeAfterRestart(t *testing.T) {
	testsupport.RequireNix(t)
	c := testsupport.BuildClosure(t)
	r := newRig(t)
	dir := filepath.Join(t.TempDir(), "out")
	// A job a previous process left running.
	j, err := r.db.CreatePush(t.Context(), r.buildID, "local", "dir://"+dir, []string{c.Top}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.db.StartPush(t.Context(), j.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	s := r.service(t, []push.Destination{{Name: "local", URL: "dir://" + dir}}, nil)
	s.Wait()
	got, err := r.db.Push(context.Background(), j.ID)
	if err != nil || got.State != db.PushSucceeded || got.Uploaded != len(c.All) {
		t.Fatalf("resumed push = %+v, %v", got, err)
	}
	for _, p := range c.All {
		if _, err := os.Stat(filepath.Join(dir, filepath.Base(p)[:32]+".narinfo")); err != nil {
			t.Errorf("narinfo of %s not pushed: %v", p, err)
		}
	}
}
