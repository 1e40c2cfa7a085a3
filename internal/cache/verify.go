package cache

import (
	"bytes"
	"compress/bzip2"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"

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

// limitReader fails with errTooLarge once more than n bytes are read, and
// remembers the first failure of the reader under it (EOF is none).
type limitReader struct {
	r   io.Reader
	n   int64
	err error
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
		err = errTooLarge
	}
	if err != nil && err != io.EOF && l.err == nil {
		l.err = err
	}
	return n, err
}

// bodyError is a failure to read the upload itself (the client went away,
// or sent more than the limit), as opposed to an upload that was read and
// turned out to be bad.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

// sinkError is a failure to keep the upload (a full disk): the server's
// fault, not the client's.
type sinkError struct{ err error }

func (e *sinkError) Error() string { return "stage NAR upload: " + e.err.Error() }
func (e *sinkError) Unwrap() error { return e.err }

// recordingWriter remembers the first error of the writer under it.
type recordingWriter struct {
	w   io.Writer
	err error
}

func (r *recordingWriter) Write(p []byte) (int, error) {
	n, err := r.w.Write(p)
	if err != nil && r.err == nil {
		r.err = err
	}
	return n, err
}

// receiveNar reads an uploaded NAR file from body into sink in one pass,
// in three stages on their own goroutines, so that a big upload is checked
// on as many cores as there are: the file is hashed as it arrives, the next
// stage decompresses it, the last hashes the NAR. A failure to read body
// is a *bodyError, a failure to write sink a *sinkError; anything else
// means the upload is not a valid NAR in that compression.
//
// size is the upload's length if known (else -1): a small one gets a small
// read buffer.
func receiveNar(ctx context.Context, zd *zstdDecoders, sink io.Writer, body io.Reader, size int64, compression string, maxSize int64) (narDigest, error) {
	d := narDigest{compression: compression}
	const chunks = 16 // of up to receiveBuffer bytes each, per stage
	file, nar := newChunkPipe(chunks), newChunkPipe(chunks)

	nh := sha256.New()
	hashed := make(chan error, 1)
	go func() {
		_, err := io.Copy(nh, nar)
		nar.closeRead(err)
		hashed <- err
	}()

	head := &headWriter{}
	type result struct {
		n   int64
		err error
	}
	decoded := make(chan result, 1)
	go func() {
		n, err := decompress(ctx, zd, io.MultiWriter(nar, head), file, compression)
		if err == nil {
			// Bytes after the end of the compressed stream, if the
			// decompressor left any, are part of the file as uploaded.
			_, err = io.Copy(io.Discard, file)
		}
		file.closeRead(err) // a failed decompression stops the copy below
		nar.closeWrite(err)
		decoded <- result{n, err}
	}()

	in := &limitReader{r: body, n: maxSize}
	out := &recordingWriter{w: sink}
	fh := sha256.New()
	bufSize := int64(receiveBuffer)
	if size >= 0 {
		bufSize = min(bufSize, size+1) // +1: a read that finds the end at once
	}
	fileSize, err := io.CopyBuffer(io.MultiWriter(out, fh, file), in, make([]byte, bufSize))
	file.closeWrite(err) // nil: the decompressor sees the end of the file
	res := <-decoded
	herr := <-hashed
	switch {
	case out.err != nil:
		return d, &sinkError{out.err}
	case in.err != nil:
		return d, &bodyError{in.err}
	case res.err != nil:
		return d, fmt.Errorf("decompress %s NAR: %w", compression, res.err)
	case err != nil:
		return d, err
	case herr != nil:
		return d, herr
	}
	if !bytes.HasPrefix(head.b, narMagic) {
		return d, errors.New("not a NAR (no nix-archive-1 header)")
	}
	d.fileSize, d.fileHash = fileSize, "sha256:"+nixbase32.Encode(fh.Sum(nil))
	d.narSize, d.narHash = res.n, "sha256:"+nixbase32.Encode(nh.Sum(nil))
	return d, nil
}

// receiveBuffer is how much of an upload is read at a time.
const receiveBuffer = 128 << 10

// zstdDecoders reuses zstd decoders: a new one allocates its window
// buffers, which costs more than decoding a small NAR does.
type zstdDecoders struct{ pool sync.Pool }

func (z *zstdDecoders) decode(w io.Writer, src io.Reader) (int64, error) {
	dec, _ := z.pool.Get().(*zstd.Decoder)
	if dec == nil {
		var err error
		dec, err = zstd.NewReader(src, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return 0, err
		}
	} else if err := dec.Reset(src); err != nil {
		dec.Close()
		return 0, err
	}
	n, err := io.Copy(w, dec)
	if err != nil {
		dec.Close() // not reused after a failure
		return n, err
	}
	if err := dec.Reset(nil); err == nil { // drops src
		z.pool.Put(dec)
	}
	return n, nil
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
func decompress(ctx context.Context, zd *zstdDecoders, w io.Writer, src io.Reader, compression string) (int64, error) {
	switch compression {
	case "none":
		return io.Copy(w, src)
	case "zstd":
		return zd.decode(w, src)
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
