package cache

import (
	"compress/bzip2"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/crystal-forge/crystal-forge/internal/nar"
	"github.com/crystal-forge/crystal-forge/internal/nixbase32"
	"github.com/crystal-forge/crystal-forge/internal/nixstore"
)

// maxGoXZ is the largest NAR compressed with the pure-Go xz encoder
// (~5 MB/s); bigger ones need the xz binary or are refused.
const maxGoXZ = 8 << 20

const narContentType = "application/x-nix-nar"

// parseNarFile splits "<stem>.nar[.zst|.xz]" into stem and compression.
func parseNarFile(file string) (stem, comp string, ok bool) {
	for _, c := range []struct{ suffix, comp string }{{".nar", ""}, {".nar.zst", "zstd"}, {".nar.xz", "xz"}} {
		if s, found := strings.CutSuffix(file, c.suffix); found {
			return s, c.comp, true
		}
	}
	return "", "", false
}

// serveNar answers /nar/<narhash>.nar?hash=<storehash> (the URL our
// narinfos name, as Harmonia's do) and /nar/<storehash>.nar[.xz|.zst].
func (s *Server) serveNar(w http.ResponseWriter, r *http.Request, file string) {
	// Uploaded NARs are named by their file hash (52 characters), local
	// ones by the store path's hash (32) or carry ?hash=.
	if s.backend != nil && r.URL.RawQuery == "" {
		localName := len(file) > 32 && strings.HasPrefix(file[32:], ".nar")
		if comp, ok := uploadedNarFile(file); ok && (s.store == nil || !localName) {
			if s.serveBackendNar(w, r, file, comp) {
				return
			}
		}
	}
	stem, comp, ok := parseNarFile(file)
	if !ok {
		notFound(w)
		return
	}
	storeHash, narHash := stem, ""
	if q := r.URL.Query().Get("hash"); q != "" {
		storeHash, narHash = q, stem
		// Length first: nixbase32.Decode panics on some non-canonical lengths.
		if len(narHash) != 52 {
			notFound(w)
			return
		}
		if _, err := nixbase32.Decode(narHash); err != nil {
			notFound(w)
			return
		}
	}
	e := s.lookupFile(w, r, storeHash)
	if e == nil {
		return
	}
	// A NAR URL names its content: if the path was rebuilt with other bytes
	// since the narinfo was issued, this URL no longer exists.
	if narHash != "" && narHash != e.narHash {
		notFound(w)
		return
	}
	h := w.Header()
	if narHash != "" {
		h.Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		h.Set("Cache-Control", "public, max-age=86400")
	}
	switch comp {
	case "zstd":
		h.Set("Content-Type", "application/zstd")
		s.streamZstd(w, r, e)
	case "xz":
		h.Set("Content-Type", "application/x-xz")
		s.streamXZ(w, r, e)
	default:
		h.Set("Content-Type", narContentType)
		s.serveRawNar(w, r, e)
	}
}

func (s *Server) serveRawNar(w http.ResponseWriter, r *http.Request, e *pathEntry) {
	h := w.Header()
	size := int64(e.info.NarSize)
	if rng := r.Header.Get("Range"); rng != "" {
		off, length, err := parseRange(rng, size)
		if err == errUnsatisfiable {
			h.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
			h.Del("Cache-Control")
			http.Error(w, "range not satisfiable", http.StatusRequestedRangeNotSatisfiable)
			return
		}
		if err == nil {
			h.Set("Accept-Ranges", "bytes")
			h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, off+length-1, size))
			h.Set("Content-Length", strconv.FormatInt(length, 10))
			w.WriteHeader(http.StatusPartialContent)
			if r.Method != http.MethodHead {
				s.dump(w, r, e, off, length)
			}
			return
		}
		// An unparsable or multi-range header is ignored: whole NAR, 200.
	}
	if s.compression == CompressionZstd && acceptsZstd(r) {
		h.Set("Vary", "Accept-Encoding")
		h.Set("Content-Encoding", "zstd")
		s.streamZstd(w, r, e)
		return
	}
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Length", strconv.FormatInt(size, 10))
	if r.Method != http.MethodHead {
		s.dump(w, r, e, 0, size)
	}
}

// dump streams part of the NAR; on failure after the header is out it
// aborts the connection so the client cannot take a short body for a whole one.
func (s *Server) dump(w io.Writer, r *http.Request, e *pathEntry, off, length int64) {
	if b := s.smallNar(e); b != nil {
		if _, err := w.Write(b[off : off+length]); err != nil {
			s.abort(r, e, err)
		}
		return
	}
	n, err := nar.DumpRange(w, e.real, off, length)
	if err == nil && n != length {
		err = fmt.Errorf("NAR of %s is %d bytes from offset %d, database says %d: store corrupt or path changed", e.info.Path, n, off, length)
	}
	if err != nil {
		s.abort(r, e, err)
	}
}

func (s *Server) abort(r *http.Request, e *pathEntry, err error) {
	if r.Context().Err() == nil {
		s.log.Error("NAR stream failed", "path", e.info.Path, "err", err)
	}
	panic(http.ErrAbortHandler)
}

func (s *Server) streamZstd(w http.ResponseWriter, r *http.Request, e *pathEntry) {
	if r.Method == http.MethodHead {
		return
	}
	enc := s.getZstd(w)
	defer s.zstdPool.Put(enc)
	if b := s.smallNar(e); b != nil {
		if _, err := enc.Write(b); err != nil {
			enc.Reset(nil)
			s.abort(r, e, err)
		}
	} else if _, err := nar.Dump(enc, e.real); err != nil {
		enc.Reset(nil)
		s.abort(r, e, err)
	}
	if err := enc.Close(); err != nil {
		s.abort(r, e, err)
	}
}

func (s *Server) getZstd(w io.Writer) *zstd.Encoder {
	if enc, ok := s.zstdPool.Get().(*zstd.Encoder); ok {
		enc.Reset(w)
		return enc
	}
	// Fastest level, one goroutine per stream: on-the-fly compression must
	// keep up with the network, and requests already give us parallelism.
	enc, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
	if err != nil {
		panic(err) // only for invalid options
	}
	return enc
}

func (s *Server) streamXZ(w http.ResponseWriter, r *http.Request, e *pathEntry) {
	xzBin, _ := exec.LookPath("xz")
	if xzBin == "" && e.info.NarSize > maxGoXZ {
		w.Header().Set("Cache-Control", "no-store")
		http.Error(w, "xz of a NAR this large needs the xz program on the server; fetch the .nar or .nar.zst URL instead", http.StatusNotFound)
		return
	}
	if r.Method == http.MethodHead {
		return
	}
	if xzBin == "" {
		xw, err := xz.NewWriter(w)
		if err != nil {
			s.abort(r, e, err)
		}
		if _, err := nar.Dump(xw, e.real); err != nil {
			s.abort(r, e, err)
		}
		if err := xw.Close(); err != nil {
			s.abort(r, e, err)
		}
		return
	}
	// The C encoder at its fastest preset, on every core.
	cmd := exec.CommandContext(r.Context(), xzBin, "-0", "-T0", "-c")
	cmd.Stdout = w
	in, err := cmd.StdinPipe()
	if err != nil {
		s.abort(r, e, err)
	}
	if err := cmd.Start(); err != nil {
		s.abort(r, e, err)
	}
	_, derr := nar.Dump(in, e.real)
	if cerr := in.Close(); derr == nil {
		derr = cerr
	}
	if werr := cmd.Wait(); derr == nil {
		derr = werr
	}
	if derr != nil {
		s.abort(r, e, derr)
	}
}

// acceptsZstd reports whether Accept-Encoding lists zstd with a non-zero q.
func acceptsZstd(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept-Encoding") {
		for part := range strings.SplitSeq(v, ",") {
			name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
			if !strings.EqualFold(strings.TrimSpace(name), "zstd") {
				continue
			}
			params = strings.ReplaceAll(params, " ", "")
			return params != "q=0" && params != "q=0.0" && params != "q=0.00" && params != "q=0.000"
		}
	}
	return false
}

var errUnsatisfiable = errors.New("range not satisfiable")

// parseRange parses a single "bytes=" range against size. Multiple ranges
// and malformed headers return a plain error (serve the whole body).
func parseRange(h string, size int64) (off, length int64, err error) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, 0, errors.New("unsupported range")
	}
	first, last, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return 0, 0, errors.New("malformed range")
	}
	if first == "" { // suffix: the last N bytes
		n, err := parseDigits(last)
		if err != nil {
			return 0, 0, err
		}
		if n == 0 || size == 0 {
			return 0, 0, errUnsatisfiable
		}
		n = min(n, size)
		return size - n, n, nil
	}
	start, err := parseDigits(first)
	if err != nil {
		return 0, 0, err
	}
	if start >= size {
		return 0, 0, errUnsatisfiable
	}
	end := size - 1
	if last != "" {
		e, err := parseDigits(last)
		if err != nil || e < start {
			return 0, 0, errors.New("malformed range")
		}
		end = min(e, size-1)
	}
	return start, end - start + 1, nil
}

// parseDigits parses a range bound: decimal digits only (RFC 9110), where
// strconv alone would also take a sign.
func parseDigits(s string) (int64, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, errors.New("malformed range")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, errors.New("malformed range")
	}
	return n, nil
}

// serveLog answers /log/<drv> with the build log Nix kept, decompressed.
// An output path's base name is accepted too and mapped to its deriver.
func (s *Server) serveLog(w http.ResponseWriter, r *http.Request, drv string) {
	hash, ok := nixstore.ParseHashPart(drv)
	if !ok {
		notFound(w)
		return
	}
	if !strings.HasSuffix(drv, ".drv") {
		e := s.lookupFile(w, r, hash)
		if e == nil {
			return
		}
		if e.info.Deriver == "" {
			notFound(w)
			return
		}
		drv = strings.TrimPrefix(e.info.Deriver, s.store.StoreDir()+"/")
	}
	file, bz, err := s.store.LogPath(drv)
	if errors.Is(err, nixstore.ErrNotFound) {
		notFound(w)
		return
	}
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	f, err := os.Open(file)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if r.Method == http.MethodHead {
		return
	}
	var src io.Reader = f
	if bz {
		src = bzip2.NewReader(f)
	}
	if _, err := io.Copy(w, src); err != nil && r.Context().Err() == nil {
		s.log.Warn("log stream failed", "drv", drv, "err", err)
		panic(http.ErrAbortHandler)
	}
}
