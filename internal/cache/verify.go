package cache

import (
	"bytes"
	"compress/bzip2"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/crystal-forge/crystal-forge/internal/nixbase32"
)

// narCompressions maps the file extensions Nix uploads with to the
// narinfo's Compression field.
var narCompressions = []struct{ ext, name string }{
	{".nar", "none"},
	{".nar.xz", "xz"},
	{".nar.zst", "zstd"},
	{".nar.bz2", "bzip2"},
}

// uploadedNarFile checks an uploaded NAR's file name ("<stem>.nar[.ext]",
// one segment) and returns its compression.
func uploadedNarFile(file string) (compression string, ok bool) {
	if file == "" || strings.ContainsAny(file, "/\\") || strings.HasPrefix(file, ".") {
		return "", false
	}
	// Longest extension first: ".nar" is a suffix of none of the others,
	// but check the compressed ones before the plain one anyway.
	for i := len(narCompressions) - 1; i >= 0; i-- {
		c := narCompressions[i]
		if stem, found := strings.CutSuffix(file, c.ext); found && stem != "" && validStem(stem) {
			return c.name, true
		}
	}
	return "", false
}

func validStem(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// narDigest is what a received NAR file turned out to be.
type narDigest struct {
	compression string
	fileHash    string // "sha256:<nix32>" of the file as stored
	fileSize    int64
	narHash     string // "sha256:<nix32>" of the decompressed NAR
	narSize     int64
}

var errTooLarge = errors.New("upload too large")

// limitReader fails with errTooLarge once more than n bytes are read.
type limitReader struct {
	r io.Reader
	n int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n < 0 {
		return 0, errTooLarge
	}
	if int64(len(p)) > l.n+1 {
		p = p[:l.n+1]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	if l.n < 0 {
		return n, errTooLarge
	}
	return n, err
}

// receiveNar copies an uploaded NAR file into f, hashing it, then reads f
// back through the decompressor and hashes the NAR. A NAR that does not
// decompress, or is not a NAR, is an error.
func receiveNar(ctx context.Context, f *os.File, body io.Reader, compression string, maxSize int64) (narDigest, error) {
	d := narDigest{compression: compression}
	fh := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, fh), &limitReader{r: body, n: maxSize})
	if err != nil {
		return d, err
	}
	d.fileSize, d.fileHash = n, "sha256:"+nixbase32.Encode(fh.Sum(nil))
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return d, err
	}
	nh := sha256.New()
	head := &headWriter{}
	d.narSize, err = decompress(ctx, io.MultiWriter(nh, head), f, compression)
	if err != nil {
		return d, fmt.Errorf("decompress %s NAR: %w", compression, err)
	}
	if !bytes.HasPrefix(head.b, narMagic) {
		return d, errors.New("not a NAR (no nix-archive-1 header)")
	}
	d.narHash = "sha256:" + nixbase32.Encode(nh.Sum(nil))
	return d, nil
}

// narMagic starts every NAR: the string "nix-archive-1", length-prefixed.
var narMagic = []byte("\x0d\x00\x00\x00\x00\x00\x00\x00nix-archive-1")

// headWriter keeps the first bytes written to it.
type headWriter struct{ b []byte }

func (h *headWriter) Write(p []byte) (int, error) {
	if need := len(narMagic) - len(h.b); need > 0 {
		h.b = append(h.b, p[:min(need, len(p))]...)
	}
	return len(p), nil
}

// decompress writes the decompressed content of src to w.
func decompress(ctx context.Context, w io.Writer, src io.Reader, compression string) (int64, error) {
	switch compression {
	case "none":
		return io.Copy(w, src)
	case "zstd":
		dec, err := zstd.NewReader(src, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return 0, err
		}
		defer dec.Close()
		return io.Copy(w, dec)
	case "bzip2":
		return io.Copy(w, bzip2.NewReader(src))
	case "xz":
		// The xz program decompresses several times faster than Go's.
		if bin, err := exec.LookPath("xz"); err == nil {
			cw := &countWriter{w: w}
			var stderr bytes.Buffer
			cmd := exec.CommandContext(ctx, bin, "-dc")
			cmd.Stdin, cmd.Stdout, cmd.Stderr = src, cw, &stderr
			if err := cmd.Run(); err != nil {
				return cw.n, fmt.Errorf("xz -d: %w: %s", err, strings.TrimSpace(stderr.String()))
			}
			return cw.n, nil
		}
		r, err := xz.NewReader(src)
		if err != nil {
			return 0, err
		}
		return io.Copy(w, r)
	}
	return 0, fmt.Errorf("unknown compression %q", compression)
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
