package testsupport

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"go/build"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/crystal-forge/crystal-forge/internal/objstore"
	"github.com/crystal-forge/crystal-forge/internal/testsupport/testenv"
)

// S3Server is a real S3-compatible server (Versity S3 Gateway over a
// directory) running for one test.
type S3Server struct {
	Endpoint  string // http://127.0.0.1:PORT
	AccessKey string
	SecretKey string
	Dir       string // the gateway's posix root: one directory per bucket
	client    *minio.Client
}

// versitygwHint says how to get the gateway.
const versitygwHint = "`make test` installs it (GOBIN=$(go env GOPATH)/bin go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)"

// versitygwPath finds versitygw on PATH or where `go install` puts it.
func versitygwPath(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	for _, dir := range []string{os.Getenv("GOBIN"), filepath.Join(build.Default.GOPATH, "bin")} {
		if dir == "" {
			continue
		}
		if p := filepath.Join(dir, "versitygw"); isExecutable(p) {
			return p
		}
	}
	testenv.Missing(t, "versitygw (Versity S3 Gateway) is not installed; "+versitygwHint)
	return ""
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// StartS3 starts versitygw on a random loopback port, serving a fresh
// directory, in its own process group, killed when the test ends.
func StartS3(t testing.TB) *S3Server {
	t.Helper()
	bin := versitygwPath(t)
	key := make([]byte, 8)
	rand.Read(key)
	s := &S3Server{AccessKey: "cftest" + hex.EncodeToString(key[:4]), SecretKey: "cfsecret" + hex.EncodeToString(key), Dir: filepath.Join(t.TempDir(), "s3")}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// A port that was free a moment ago can be taken before the gateway
	// binds it: try a few.
	var lastErr error
	for range 3 {
		port := FreeTCPPort(t)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		if lastErr = s.start(t, bin, addr); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		t.Fatal(lastErr)
	}
	c, err := minio.New(s.Endpoint[len("http://"):], &minio.Options{Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""), Region: "us-east-1", BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	s.client = c
	return s
}

func (s *S3Server) start(t testing.TB, bin, addr string) error {
	var out bytes.Buffer
	cmd := exec.Command(bin, "--port", addr, "posix", s.Dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start versitygw: %w", err)
	}
	done := make(chan struct{})
	var waitErr error // read after done is closed
	go func() { waitErr = cmd.Wait(); close(done) }()
	kill := func() {
		signal(t, -cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-done:
			return fmt.Errorf("versitygw on %s exited before it was ready (%v):\n%s", addr, waitErr, out.String())
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			kill()
			return fmt.Errorf("versitygw did not listen on %s within 30s:\n%s", addr, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(func() {
		kill()
		if t.Failed() {
			t.Logf("versitygw output:\n%s", tailString(out.String(), 4000))
		}
	})
	s.Endpoint = "http://" + addr
	return nil
}

// NewBucket creates a bucket with a unique name and returns it.
func (s *S3Server) NewBucket(t testing.TB) string {
	t.Helper()
	id := make([]byte, 4)
	rand.Read(id)
	name := "cf-test-" + hex.EncodeToString(id)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.client.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: "us-east-1"}); err != nil {
		t.Fatalf("create bucket %s: %v", name, err)
	}
	return name
}

// URL is the storage URL of bucket on this server.
func (s *S3Server) URL(bucket string) string {
	return "s3://" + bucket + "?endpoint=" + s.Endpoint + "&region=us-east-1"
}

// Env is the environment that gives a client this server's credentials.
func (s *S3Server) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + s.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s.SecretKey}
}

// Getenv looks up Env's variables, and nothing else.
func (s *S3Server) Getenv(k string) string {
	switch k {
	case "AWS_ACCESS_KEY_ID":
		return s.AccessKey
	case "AWS_SECRET_ACCESS_KEY":
		return s.SecretKey
	}
	return ""
}

// StorageBackends returns an opener for each kind of cache storage, for
// tests that must pass on all of them: a new directory, and a new bucket on
// a real S3 server (versitygw).
func StorageBackends() map[string]func(t *testing.T) objstore.Store {
	return map[string]func(t *testing.T) objstore.Store{
		"dir": func(t *testing.T) objstore.Store {
			s, err := objstore.OpenDir(filepath.Join(t.TempDir(), "cache"))
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		"s3": func(t *testing.T) objstore.Store {
			srv := StartS3(t)
			s, err := objstore.Open(t.Context(), srv.URL(srv.NewBucket(t)), objstore.Options{Getenv: srv.Getenv})
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	}
}

// StoreKeys lists a store's object keys, sorted.
func StoreKeys(t testing.TB, s objstore.Store) []string {
	t.Helper()
	var keys []string
	if err := s.List(t.Context(), "", func(i objstore.Info) error { keys = append(keys, i.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	return keys
}
