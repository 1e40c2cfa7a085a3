package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3 stores objects in a bucket of S3-compatible object storage. An S3 PUT
// is atomic by itself: the object appears when the upload completes.
type S3 struct {
	client *minio.Client
	bucket string
	prefix string // "" or "some/prefix/"
	name   string
}

func openS3(ctx context.Context, u *url.URL, opts Options) (*S3, error) {
	getenv := opts.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	bucket := u.Host
	if bucket == "" {
		return nil, fmt.Errorf("storage URL %q: no bucket (want s3://bucket?endpoint=...)", u.Redacted())
	}
	prefix := strings.Trim(u.Path, "/")
	if prefix != "" {
		prefix += "/"
	}
	q := u.Query()
	endpoint, secure := "s3.amazonaws.com", true
	if e := q.Get("endpoint"); e != "" {
		eu, err := url.Parse(e)
		if err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" {
			return nil, fmt.Errorf("storage URL: endpoint %q must be http://host:port or https://host:port", e)
		}
		endpoint, secure = eu.Host, eu.Scheme == "https"
	}
	region := q.Get("region")
	if region == "" {
		region = getenv("AWS_REGION")
	}
	creds, err := s3Credentials(getenv)
	if err != nil {
		return nil, err
	}
	lookup := minio.BucketLookupAuto
	if q.Get("endpoint") != "" {
		// Self-hosted S3 (MinIO, Garage, Versity...) rarely has DNS per bucket.
		lookup = minio.BucketLookupPath
	}
	client, err := minio.New(endpoint, &minio.Options{Creds: creds, Secure: secure, Region: region, BucketLookup: lookup})
	if err != nil {
		return nil, fmt.Errorf("S3 client for %s: %w", endpoint, err)
	}
	s := &S3{client: client, bucket: bucket, prefix: prefix, name: "s3://" + bucket + "/" + prefix + " at " + endpoint}
	ok, err := client.BucketExists(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("S3 bucket %s at %s: %w (check the endpoint and the credentials)", bucket, endpoint, err)
	}
	if !ok {
		return nil, fmt.Errorf("S3 bucket %s does not exist at %s: create it first", bucket, endpoint)
	}
	return s, nil
}

// s3Credentials takes the access key from the environment, else from the
// shared credentials file.
func s3Credentials(getenv func(string) string) (*credentials.Credentials, error) {
	if id, secret := getenv("AWS_ACCESS_KEY_ID"), getenv("AWS_SECRET_ACCESS_KEY"); id != "" && secret != "" {
		return credentials.NewStaticV4(id, secret, getenv("AWS_SESSION_TOKEN")), nil
	}
	file := getenv("AWS_SHARED_CREDENTIALS_FILE")
	if file == "" {
		if home := getenv("HOME"); home != "" {
			file = filepath.Join(home, ".aws", "credentials")
		}
	}
	profile := getenv("AWS_PROFILE")
	if profile == "" {
		profile = "default"
	}
	if file != "" {
		if _, err := os.Stat(file); err == nil {
			c := credentials.NewFileAWSCredentials(file, profile)
			if v, err := c.GetWithContext(nil); err != nil || v.AccessKeyID == "" {
				return nil, fmt.Errorf("S3 credentials file %s has no usable profile %q: %v", file, profile, err)
			}
			return c, nil
		}
	}
	return nil, errors.New("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_SHARED_CREDENTIALS_FILE (an AWS credentials file)")
}

func (s *S3) String() string { return s.name }

func (s *S3) key(key string) (string, error) {
	if err := ValidKey(key); err != nil {
		return "", err
	}
	return s.prefix + key, nil
}

func isNotFound(err error) bool {
	r := minio.ToErrorResponse(err)
	return r.StatusCode == http.StatusNotFound || r.Code == "NoSuchKey"
}

// Stat implements Store.
func (s *S3) Stat(ctx context.Context, key string) (Info, error) {
	k, err := s.key(key)
	if err != nil {
		return Info{}, err
	}
	oi, err := s.client.StatObject(ctx, s.bucket, k, minio.StatObjectOptions{})
	if isNotFound(err) {
		return Info{}, ErrNotFound
	}
	if err != nil {
		return Info{}, fmt.Errorf("stat %s in %s: %w", key, s, err)
	}
	return Info{Key: key, Size: oi.Size, ModTime: oi.LastModified}, nil
}

// Get implements Store with a ranged GET, streamed from the response body.
func (s *S3) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	k, err := s.key(key)
	if err != nil {
		return nil, err
	}
	var opts minio.GetObjectOptions
	switch {
	case length == 0:
		return io.NopCloser(strings.NewReader("")), nil
	case length > 0:
		err = opts.SetRange(offset, offset+length-1)
	case offset > 0:
		err = opts.SetRange(offset, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	obj, err := s.client.GetObject(ctx, s.bucket, k, opts)
	if err != nil {
		return nil, fmt.Errorf("get %s from %s: %w", key, s, err)
	}
	// minio sends the request lazily; Stat sends it, so a missing object is
	// reported here rather than on the first Read.
	if _, err := obj.Stat(); err != nil {
		// The object was never read: closing it loses nothing.
		_ = obj.Close()
		if isNotFound(err) {
			return nil, ErrNotFound
		}
		return nil, fmt.Errorf("get %s from %s: %w", key, s, err)
	}
	return obj, nil
}

// Put implements Store. An unknown size makes a multipart upload, which is
// visible only once completed (and aborted when r fails).
func (s *S3) Put(ctx context.Context, key string, r io.Reader, size int64, contentType string) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	opts := minio.PutObjectOptions{ContentType: contentType}
	if size < 0 {
		opts.PartSize = 16 << 20 // bounds the memory of one upload
	}
	if _, err := s.client.PutObject(ctx, s.bucket, k, r, size, opts); err != nil {
		return fmt.Errorf("store %s in %s: %w", key, s, err)
	}
	return nil
}

// Delete implements Store.
func (s *S3) Delete(ctx context.Context, key string) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	if err := s.client.RemoveObject(ctx, s.bucket, k, minio.RemoveObjectOptions{}); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete %s from %s: %w", key, s, err)
	}
	return nil
}

// List implements Store.
func (s *S3) List(ctx context.Context, prefix string, fn func(Info) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops minio's listing goroutine when fn fails
	for oi := range s.client.ListObjectsIter(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + prefix, Recursive: true}) {
		if oi.Err != nil {
			return fmt.Errorf("list %s: %w", s, oi.Err)
		}
		if err := fn(Info{Key: strings.TrimPrefix(oi.Key, s.prefix), Size: oi.Size, ModTime: oi.LastModified}); err != nil {
			return err
		}
	}
	return ctx.Err()
}
