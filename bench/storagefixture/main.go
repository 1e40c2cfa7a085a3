// Command storagefixture prepares bench/storage.sh's fixtures:
//
//	storagefixture bucket ENDPOINT NAME    create an S3 bucket (credentials from AWS_*)
//	storagefixture gc-objects DIR N        write N narinfos and N NARs into a
//	                                       directory backend, a month old, narinfo
//	                                       i referring to i/8, and pin path 0..9
//	storagefixture null-cache ADDR         serve a binary cache that has nothing
//	                                       and takes every upload, discarding it:
//	                                       nix copy --to it costs only the client
//	                                       and HTTP, the floor for any HTTP cache
package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/crystal-forge/crystal-forge/internal/narinfo"
	"github.com/crystal-forge/crystal-forge/internal/nixbase32"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "storagefixture:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	switch {
	case len(args) == 3 && args[0] == "bucket":
		return bucket(args[1], args[2])
	case len(args) == 2 && args[0] == "null-cache":
		return nullCache(args[1])
	case len(args) == 3 && args[0] == "gc-objects":
		n, err := strconv.Atoi(args[2])
		if err != nil {
			return err
		}
		return gcObjects(args[1], n)
	}
	return fmt.Errorf("usage: storagefixture bucket ENDPOINT NAME | gc-objects DIR N | null-cache ADDR")
}

func bucket(endpoint, name string) error {
	u, err := url.Parse(endpoint)
	if err != nil {
		return err
	}
	c, err := minio.New(u.Host, &minio.Options{Creds: credentials.NewStaticV4(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), ""),
		Secure: u.Scheme == "https", Region: "us-east-1", BucketLookup: minio.BucketLookupPath})
	if err != nil {
		return err
	}
	return c.MakeBucket(context.Background(), name, minio.MakeBucketOptions{Region: "us-east-1"})
}

func nullCache(addr string) error {
	return http.ListenAndServe(addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPut:
			if _, err := io.Copy(io.Discard, r.Body); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
			}
		case r.URL.Path == "/nix-cache-info":
			fmt.Fprint(w, "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n")
		default:
			http.NotFound(w, r)
		}
	}))
}

func storePath(i int) string {
	h := sha256.Sum256([]byte("cf-bench-gc-" + strconv.Itoa(i)))
	return "/nix/store/" + nixbase32.Encode(h[:20]) + "-cf-bench-gc-" + strconv.Itoa(i)
}

func gcObjects(dir string, n int) error {
	if err := os.MkdirAll(filepath.Join(dir, "nar"), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "pins"), 0o755); err != nil {
		return err
	}
	old := time.Now().Add(-31 * 24 * time.Hour)
	write := func(rel, body string) error {
		p := filepath.Join(dir, rel)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			return err
		}
		return os.Chtimes(p, old, old)
	}
	for i := range n {
		p := storePath(i)
		nar := fmt.Sprintf("nar/%052d.nar.zst", i)
		ni := &narinfo.NarInfo{StorePath: p, URL: nar, Compression: "zstd",
			NarHash: "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s", NarSize: 4096}
		if i > 0 {
			ni.References = []string{storePath(i / 8)}
		}
		if err := write(filepath.Base(p)[:32]+".narinfo", ni.String()); err != nil {
			return err
		}
		if err := write(nar, "nar"); err != nil {
			return err
		}
	}
	for i := range 10 {
		if err := os.WriteFile(filepath.Join(dir, "pins", strconv.Itoa(i)), []byte(storePath(n-1-i)+"\n"), 0o644); err != nil {
			return err
		}
	}
	return nil
}
