package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/narinfo"
	"github.com/crystal-forge/crystal-forge/internal/nixbase32"
	"github.com/crystal-forge/crystal-forge/internal/nixstore"
	"github.com/crystal-forge/crystal-forge/internal/objstore"
	"github.com/crystal-forge/crystal-forge/internal/signing"
)

// SignaturePolicy says which uploaded narinfos are accepted.
type SignaturePolicy string

const (
	// PolicySign accepts narinfos with or without signatures; the cache
	// signs them with its keys (the uploader is trusted by its token).
	PolicySign SignaturePolicy = "sign"
	// PolicyRequireTrusted accepts only narinfos with a valid signature by
	// one of the trusted keys; the cache signs them too.
	PolicyRequireTrusted SignaturePolicy = "require-trusted"
)

// Defaults for uploads.
const (
	DefaultMaxNarBytes = 32 << 30
	maxNarinfoBytes    = 1 << 20
	// pendingTTL is how long an uploaded NAR waits for its narinfo.
	pendingTTL = time.Hour
	// NARs up to memNarBytes wait for their narinfo in memory, as long as
	// all of them together stay under memPendingBytes; bigger ones (and
	// any beyond that) wait in a file. A small path's upload then creates
	// no file but its objects: creating files is what it costs.
	memNarBytes     = 4 << 20
	memPendingBytes = 256 << 20
)

// UploadConfig turns on uploads (PUT, as `nix copy --to http://...` does).
type UploadConfig struct {
	Auth        Authenticator // required
	Policy      SignaturePolicy
	TrustedKeys []*signing.PublicKey // for PolicyRequireTrusted
	// MaxNarBytes bounds one uploaded NAR file (as sent, compressed);
	// 0 means DefaultMaxNarBytes.
	MaxNarBytes int64
	// StagingDir holds NARs until their narinfo arrives (default: the
	// system's temporary directory). Use a disk, not a tmpfs, for big paths.
	StagingDir string
}

// uploads is the cache's upload state: NARs received and verified, waiting
// for their narinfo. Nothing here is visible to readers.
type uploads struct {
	cfg  UploadConfig
	zstd zstdDecoders

	mu      sync.Mutex
	pending map[string]*pendingNar // by NAR file name
	memUsed int64                  // bytes held in memory: pending and being received
}

// pendingNar is a received NAR: in memory (data) or in a staging file.
type pendingNar struct {
	data     []byte
	file     string
	digest   narDigest
	received time.Time
}

func newUploads(cfg UploadConfig) (*uploads, error) {
	if cfg.Auth == nil {
		return nil, errors.New("cache: uploads need an Authenticator (upload tokens)")
	}
	switch cfg.Policy {
	case "":
		cfg.Policy = PolicySign
	case PolicySign:
	case PolicyRequireTrusted:
		if len(cfg.TrustedKeys) == 0 {
			return nil, errors.New("cache: signature policy require-trusted needs at least one trusted public key")
		}
	default:
		return nil, fmt.Errorf("cache: unknown signature policy %q (want sign or require-trusted)", cfg.Policy)
	}
	if cfg.MaxNarBytes <= 0 {
		cfg.MaxNarBytes = DefaultMaxNarBytes
	}
	if cfg.StagingDir == "" {
		cfg.StagingDir = os.TempDir()
	}
	if err := os.MkdirAll(cfg.StagingDir, 0o700); err != nil {
		return nil, fmt.Errorf("cache: upload staging directory: %w", err)
	}
	return &uploads{cfg: cfg, pending: make(map[string]*pendingNar)}, nil
}

// take removes and returns the pending NAR called file, if any. The caller
// drops it when done.
func (u *uploads) take(file string) *pendingNar {
	u.mu.Lock()
	defer u.mu.Unlock()
	p := u.pending[file]
	delete(u.pending, file)
	return p
}

// add records a verified NAR, replacing (and dropping) an earlier one of
// the same name, and drops NARs whose narinfo never came.
func (u *uploads) add(log *slog.Logger, name string, p *pendingNar) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if old := u.pending[name]; old != nil {
		u.dropLocked(log, old)
	}
	u.pending[name] = p
	for k, q := range u.pending {
		if time.Since(q.received) > pendingTTL {
			u.dropLocked(log, q)
			delete(u.pending, k)
		}
	}
}

// drop forgets a pending NAR that is no longer needed.
func (u *uploads) drop(log *slog.Logger, p *pendingNar) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.dropLocked(log, p)
}

func (u *uploads) dropLocked(log *slog.Logger, p *pendingNar) {
	u.memUsed -= int64(len(p.data))
	p.data = nil
	if p.file != "" {
		removeStaged(log, p.file)
	}
}

// reserve grants up to n bytes of memory for an upload being received
// (0 when the budget is spent); release gives back what was not kept.
func (u *uploads) reserve(n int64) int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	n = max(0, min(n, memPendingBytes-u.memUsed))
	u.memUsed += n
	return n
}

func (u *uploads) release(n int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.memUsed -= n
}

// stagingBuffer holds an upload as it arrives: in memory up to limit
// bytes, then in a new file in dir.
type stagingBuffer struct {
	dir   string
	limit int
	mem   []byte
	file  *os.File
}

func (b *stagingBuffer) Write(p []byte) (int, error) {
	if b.file == nil && len(b.mem)+len(p) <= b.limit {
		b.mem = append(b.mem, p...)
		return len(p), nil
	}
	if b.file == nil {
		f, err := os.CreateTemp(b.dir, "upload-*.nar")
		if err != nil {
			return 0, err
		}
		b.file = f
		if _, err := f.Write(b.mem); err != nil {
			return 0, err
		}
		b.mem = nil
	}
	return b.file.Write(p)
}

// close closes the staging file, if there is one, and removes it unless
// keep.
func (b *stagingBuffer) close(log *slog.Logger, keep bool) error {
	if b.file == nil {
		return nil
	}
	err := b.file.Close()
	if !keep || err != nil {
		removeStaged(log, b.file.Name())
	}
	return err
}

// removeStaged deletes a staging file no longer needed. A failure leaves
// only litter in the staging directory, which the log reports.
func removeStaged(log *slog.Logger, file string) {
	if err := os.Remove(file); err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.Warn("remove staged upload", "file", file, "err", err)
	}
}

// authorize checks the request's upload token, answering 401 itself.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) (string, bool) {
	tok := requestToken(r)
	if tok != "" {
		name, ok, err := s.uploads.cfg.Auth.AuthenticateUpload(r.Context(), tok)
		if err != nil {
			s.internalError(w, r, fmt.Errorf("check upload token: %w", err))
			return "", false
		}
		if ok {
			return name, true
		}
	}
	w.Header().Set("WWW-Authenticate", `Basic realm="crystal-forge cache", charset="UTF-8"`)
	msg := "upload token missing: send it as the password of HTTP Basic auth (Nix: a netrc-file entry for this host) or as a Bearer token"
	if tok != "" {
		msg = "upload token not accepted"
	}
	http.Error(w, msg, http.StatusUnauthorized)
	return "", false
}

// badUpload answers 4xx with a message for the uploader.
func badUpload(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Cache-Control", "no-store")
	http.Error(w, fmt.Sprintf(format, args...), code)
}

// putNar receives nar/<file>: stored in the staging area, hashed and
// decompressed to check it, and kept there until its narinfo arrives.
func (s *Server) putNar(w http.ResponseWriter, r *http.Request, file string) {
	who, ok := s.authorize(w, r)
	if !ok {
		return
	}
	compression, ok := uploadedNarFile(file)
	if !ok {
		badUpload(w, http.StatusBadRequest, "bad NAR file name %q: want <name>.nar, .nar.xz, .nar.zst or .nar.bz2", file)
		return
	}
	max := s.uploads.cfg.MaxNarBytes
	if r.ContentLength > max {
		badUpload(w, http.StatusRequestEntityTooLarge, "NAR of %d bytes is over this cache's limit of %d bytes", r.ContentLength, max)
		return
	}
	u := s.uploads
	// Memory for a NAR that fits (all of it if its length is unknown):
	// one that does not goes straight to a file.
	want := int64(memNarBytes)
	switch {
	case r.ContentLength > memNarBytes:
		want = 0
	case r.ContentLength >= 0:
		want = r.ContentLength
	}
	granted := u.reserve(want)
	buf := &stagingBuffer{dir: u.cfg.StagingDir, limit: int(granted)}
	if r.ContentLength >= 0 && r.ContentLength <= granted {
		buf.mem = make([]byte, 0, r.ContentLength)
	}
	d, err := receiveNar(r.Context(), &u.zstd, buf, r.Body, r.ContentLength, compression, max)
	// Nix names the file by its hash: a mismatch means it was damaged.
	stem := file[:strings.Index(file, ".nar")]
	misnamed := err == nil && looksLikeSHA256(stem) && "sha256:"+stem != d.fileHash
	keep := err == nil && !misnamed
	if cerr := buf.close(s.log, keep); keep && cerr != nil {
		err, keep = &sinkError{cerr}, false
	}
	if !keep {
		buf.mem = nil
	}
	u.release(granted - int64(len(buf.mem)))
	var body *bodyError
	var sink *sinkError
	switch {
	case keep:
	case misnamed:
		badUpload(w, http.StatusBadRequest, "%s: the file's sha256 is %s, not the one its name says", file, d.fileHash)
		return
	case errors.As(err, &sink):
		s.internalError(w, r, err)
		return
	case errors.Is(err, errTooLarge):
		badUpload(w, http.StatusRequestEntityTooLarge, "NAR is over this cache's limit of %d bytes", max)
		return
	case errors.As(err, &body):
		// The client went away, or its request was broken.
		s.log.Warn("NAR upload cut off", "file", file, "uploader", who, "err", err)
		badUpload(w, http.StatusBadRequest, "reading the NAR failed: %v", err)
		return
	default:
		badUpload(w, http.StatusBadRequest, "%s is not a valid %s-compressed NAR: %v", file, compression, err)
		return
	}
	p := &pendingNar{data: buf.mem, digest: d, received: time.Now()}
	if buf.file != nil {
		p.file = buf.file.Name()
	}
	u.add(s.log, file, p)
	s.log.Debug("NAR received", "file", file, "uploader", who, "nar_size", d.narSize)
	w.WriteHeader(http.StatusOK)
}

// putNarinfo receives <hash>.narinfo and, once everything checks out, makes
// the NAR and then the narinfo visible, in that order.
func (s *Server) putNarinfo(w http.ResponseWriter, r *http.Request, hash string) {
	who, ok := s.authorize(w, r)
	if !ok {
		return
	}
	if !nixbase32.ValidHash(hash) {
		badUpload(w, http.StatusBadRequest, "%q is not a store path hash", hash)
		return
	}
	if r.ContentLength > maxNarinfoBytes {
		badUpload(w, http.StatusRequestEntityTooLarge, "narinfo over %d bytes", maxNarinfoBytes)
		return
	}
	body, err := io.ReadAll(&limitReader{r: r.Body, n: maxNarinfoBytes})
	if errors.Is(err, errTooLarge) {
		badUpload(w, http.StatusRequestEntityTooLarge, "narinfo over %d bytes", maxNarinfoBytes)
		return
	}
	if err != nil {
		badUpload(w, http.StatusBadRequest, "reading the narinfo failed: %v", err)
		return
	}
	ni, err := narinfo.Parse(string(body))
	if err != nil {
		badUpload(w, http.StatusBadRequest, "%v", err)
		return
	}
	code, err := s.acceptNarinfo(r.Context(), hash, ni)
	if err != nil {
		if code == http.StatusInternalServerError {
			s.internalError(w, r, err)
			return
		}
		s.log.Warn("upload refused", "path", ni.StorePath, "uploader", who, "err", err)
		badUpload(w, code, "%s: %v", ni.StorePath, err)
		return
	}
	s.log.Info("path uploaded", "path", ni.StorePath, "uploader", who, "nar_size", ni.NarSize)
	w.WriteHeader(http.StatusOK)
}

// acceptNarinfo verifies ni against its NAR, references and the signature
// policy, then stores both. It returns the HTTP status for an error.
func (s *Server) acceptNarinfo(ctx context.Context, hash string, ni *narinfo.NarInfo) (int, error) {
	if path.Dir(ni.StorePath) != s.storeDir {
		return http.StatusBadRequest, fmt.Errorf("store path is not in %s", s.storeDir)
	}
	if h, ok := nixstore.ParseHashPart(path.Base(ni.StorePath)); !ok || h != hash {
		return http.StatusBadRequest, fmt.Errorf("narinfo uploaded as %s.narinfo describes another path", hash)
	}
	file, ok := strings.CutPrefix(ni.URL, "nar/")
	comp, okName := uploadedNarFile(file)
	if !ok || !okName {
		return http.StatusBadRequest, fmt.Errorf("URL %q: want nar/<file>.nar[.xz|.zst|.bz2]", ni.URL)
	}
	if comp != ni.Compression {
		return http.StatusBadRequest, fmt.Errorf("narinfo Compression %q does not match the NAR file %s", ni.Compression, file)
	}
	// The signature policy first: it needs no I/O.
	if s.uploads.cfg.Policy == PolicyRequireTrusted && !s.trusted(ni) {
		return http.StatusForbidden, errors.New("no valid signature by a trusted key (this cache's signature policy is require-trusted)")
	}
	for _, ref := range ni.References {
		if ref == ni.StorePath {
			continue
		}
		h, ok := nixstore.ParseHashPart(path.Base(ref))
		if !ok || path.Dir(ref) != s.storeDir {
			return http.StatusBadRequest, fmt.Errorf("reference %q is not a store path", ref)
		}
		has, err := s.hasPath(ctx, h)
		if err != nil {
			return http.StatusInternalServerError, fmt.Errorf("look up reference %s: %w", ref, err)
		}
		if !has {
			return http.StatusBadRequest, fmt.Errorf("reference %s is in neither this cache nor its store: upload it first", ref)
		}
	}

	p := s.uploads.take(file)
	var d narDigest
	if p != nil {
		defer s.uploads.drop(s.log, p)
		d = p.digest
	} else {
		// Nix skips uploading a NAR file that already exists (an identical
		// NAR of another path): check what is stored.
		var err error
		d, err = s.digestStoredNar(ctx, file, comp)
		if errors.Is(err, objstore.ErrNotFound) {
			return http.StatusBadRequest, fmt.Errorf("NAR %s was not uploaded (PUT nar/%s first)", ni.URL, file)
		}
		if err != nil {
			return http.StatusInternalServerError, err
		}
	}
	narHash, err := nixstore.NormaliseHash(ni.NarHash)
	if err != nil {
		return http.StatusBadRequest, fmt.Errorf("NarHash: %w", err)
	}
	if narHash != d.narHash || ni.NarSize != uint64(d.narSize) {
		// The staged NAR is dropped (deferred above): the client must
		// upload it again with a narinfo that describes it.
		return http.StatusBadRequest, fmt.Errorf("the uploaded NAR does not match the narinfo: NarHash %s, NarSize %d in the narinfo; %s, %d uploaded", narHash, ni.NarSize, d.narHash, d.narSize)
	}
	if ni.FileHash != "" {
		if fh, err := nixstore.NormaliseHash(ni.FileHash); err != nil || fh != d.fileHash {
			return http.StatusBadRequest, fmt.Errorf("FileHash %s does not match the uploaded file (%s)", ni.FileHash, d.fileHash)
		}
	}
	if ni.FileSize != 0 && ni.FileSize != uint64(d.fileSize) {
		return http.StatusBadRequest, fmt.Errorf("FileSize %d does not match the uploaded file (%d bytes)", ni.FileSize, d.fileSize)
	}
	ni.NarHash, ni.FileHash, ni.FileSize = narHash, d.fileHash, uint64(d.fileSize)

	s.resign(ni)
	text := ni.String()
	objs := make([]objstore.Object, 0, 2)
	if p != nil {
		objs = append(objs, objstore.Object{Key: "nar/" + file, ContentType: narContentTypes[comp], Data: p.data, File: p.file})
	}
	objs = append(objs, objstore.Object{Key: narinfoKey(hash), ContentType: narinfo.ContentType, Data: []byte(text)})
	if err := objstore.PutObjects(ctx, s.backend, objs); err != nil {
		return http.StatusInternalServerError, err
	}
	s.remote.put(hash, &remoteEntry{narinfo: []byte(text), info: ni, expires: time.Now().Add(backendHitTTL)})
	return 0, nil
}

// trusted reports whether ni carries a valid signature by a trusted key.
func (s *Server) trusted(ni *narinfo.NarInfo) bool {
	for _, k := range s.uploads.cfg.TrustedKeys {
		if ni.Verify(k) {
			return true
		}
	}
	return false
}

// digestStoredNar hashes a NAR file already in the backend.
func (s *Server) digestStoredNar(ctx context.Context, file, comp string) (narDigest, error) {
	rc, err := s.backend.Get(ctx, "nar/"+file, 0, -1)
	if err != nil {
		return narDigest{}, err
	}
	defer rc.Close()
	d, err := receiveNar(ctx, &s.uploads.zstd, io.Discard, rc, -1, comp, 1<<62)
	if err != nil {
		return d, fmt.Errorf("verify stored NAR %s: %w", file, err)
	}
	return d, nil
}

// looksLikeSHA256 reports whether s is a nix32 SHA-256 digest.
func looksLikeSHA256(s string) bool {
	if len(s) != 52 { // checked first: Decode panics on some lengths
		return false
	}
	_, err := nixbase32.Decode(s)
	return err == nil
}
