package objstore_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/objstore"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// failingReader returns some data, then an error: an upload cut off.
type failingReader struct {
	data []byte
}

func (f *failingReader) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, errors.New("connection reset")
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

func TestStore(t *testing.T) {
	for name, open := range testsupport.StorageBackends() {
		t.Run(name, func(t *testing.T) {
			s := open(t)
			ctx := t.Context()
			data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB

			if _, err := s.Stat(ctx, "nar/missing.nar"); !errors.Is(err, objstore.ErrNotFound) {
				t.Fatalf("Stat of a missing object: %v, want ErrNotFound", err)
			}
			if _, err := s.Get(ctx, "nar/missing.nar", 0, -1); !errors.Is(err, objstore.ErrNotFound) {
				t.Fatalf("Get of a missing object: %v, want ErrNotFound", err)
			}
			if err := s.Put(ctx, "nar/a.nar", bytes.NewReader(data), int64(len(data)), "application/x-nix-nar"); err != nil {
				t.Fatal(err)
			}
			if err := s.Put(ctx, "b.narinfo", strings.NewReader("hello"), -1, "text/x-nix-narinfo"); err != nil {
				t.Fatal(err)
			}
			info, err := s.Stat(ctx, "nar/a.nar")
			if err != nil || info.Size != int64(len(data)) {
				t.Fatalf("Stat: %+v, %v; want size %d", info, err, len(data))
			}

			for _, tc := range []struct {
				name        string
				off, length int64
				want        []byte
			}{
				{"whole", 0, -1, data},
				{"range", 1000, 5000, data[1000:6000]},
				{"from offset to end", int64(len(data)) - 10, -1, data[len(data)-10:]},
				{"empty", 5, 0, nil},
			} {
				rc, err := s.Get(ctx, "nar/a.nar", tc.off, tc.length)
				if err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil || !bytes.Equal(got, tc.want) {
					t.Fatalf("%s: got %d bytes (%v), want %d", tc.name, len(got), err, len(tc.want))
				}
			}

			// A Put that fails half-way leaves the old object, or none.
			if err := s.Put(ctx, "b.narinfo", &failingReader{data: []byte("half")}, 100, ""); err == nil {
				t.Fatal("Put from a failing reader succeeded")
			}
			if got, err := objstore.ReadAll(ctx, s, "b.narinfo"); err != nil || string(got) != "hello" {
				t.Fatalf("after a failed overwrite: %q, %v; want the old object", got, err)
			}
			if err := s.Put(ctx, "c.narinfo", &failingReader{data: []byte("half")}, -1, ""); err == nil {
				t.Fatal("Put of unknown size from a failing reader succeeded")
			}
			if _, err := s.Stat(ctx, "c.narinfo"); !errors.Is(err, objstore.ErrNotFound) {
				t.Fatalf("a failed Put left an object: %v", err)
			}

			var keys []string
			if err := s.List(ctx, "", func(i objstore.Info) error { keys = append(keys, i.Key); return nil }); err != nil {
				t.Fatal(err)
			}
			slices.Sort(keys)
			if !slices.Equal(keys, []string{"b.narinfo", "nar/a.nar"}) {
				t.Fatalf("List: %q", keys)
			}
			keys = nil
			if err := s.List(ctx, "nar/", func(i objstore.Info) error { keys = append(keys, i.Key); return nil }); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(keys, []string{"nar/a.nar"}) {
				t.Fatalf("List nar/: %q", keys)
			}
			stop := errors.New("stop")
			if err := s.List(ctx, "", func(objstore.Info) error { return stop }); !errors.Is(err, stop) {
				t.Fatalf("List did not return fn's error: %v", err)
			}

			if err := s.Delete(ctx, "nar/a.nar"); err != nil {
				t.Fatal(err)
			}
			if err := s.Delete(ctx, "nar/a.nar"); err != nil {
				t.Fatalf("deleting a missing object: %v", err)
			}
			if _, err := s.Stat(ctx, "nar/a.nar"); !errors.Is(err, objstore.ErrNotFound) {
				t.Fatalf("Stat after Delete: %v", err)
			}
			for _, bad := range []string{"", "/abs", "../x", "a//b", "a/./b", "nar/", ".staging/x"} {
				if err := s.Put(ctx, bad, strings.NewReader("x"), 1, ""); err == nil {
					t.Errorf("Put accepted the key %q", bad)
				}
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"ftp://x", "unknown scheme"},
		{"dir://host/x", "want dir:///absolute/path"},
		{"s3://", "no bucket"},
		{"s3://b?endpoint=ftp://x", "endpoint"},
	} {
		_, err := objstore.Open(context.Background(), tc.url, objstore.Options{Getenv: func(string) string { return "" }})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%q) = %v, want an error containing %q", tc.url, err, tc.want)
		}
	}
	_, err := objstore.Open(context.Background(), "s3://b?endpoint=http://127.0.0.1:1", objstore.Options{Getenv: func(string) string { return "" }})
	if err == nil || !strings.Contains(err.Error(), "no S3 credentials") {
		t.Errorf("Open without credentials = %v, want a message naming the variables", err)
	}
}

func TestS3MissingBucket(t *testing.T) {
	srv := testsupport.StartS3(t)
	_, err := objstore.Open(t.Context(), srv.URL("no-such-bucket"), objstore.Options{Getenv: srv.Getenv})
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("Open of a missing bucket = %v", err)
	}
	_, err = objstore.Open(t.Context(), srv.URL("no-such-bucket"), objstore.Options{Getenv: func(k string) string {
		if k == "AWS_ACCESS_KEY_ID" {
			return srv.AccessKey
		}
		if k == "AWS_SECRET_ACCESS_KEY" {
			return "wrong"
		}
		return ""
	}})
	if err == nil || !strings.Contains(err.Error(), "credentials") {
		t.Fatalf("Open with a wrong secret = %v", err)
	}
}
