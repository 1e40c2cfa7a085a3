package cache

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/crystal-forge/crystal-forge/internal/nixbase32"
)

// fakeNar is n bytes that start like a NAR, half of them compressible.
func fakeNar(n int) []byte {
	b := make([]byte, n)
	copy(b, narMagic)
	rand.Read(b[len(narMagic) : len(narMagic)+(n-len(narMagic))/2])
	return b
}

func zstdBytes(t testing.TB, b []byte) []byte {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	return enc.EncodeAll(b, nil)
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return "sha256:" + nixbase32.Encode(h[:])
}

// failAfter reads r, then fails with err.
type failAfter struct {
	r   io.Reader
	err error
}

func (f *failAfter) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

type fullDisk struct{ n int }

func (f *fullDisk) Write(p []byte) (int, error) {
	if f.n+len(p) > 1000 {
		return 0, errors.New("no space left on device")
	}
	f.n += len(p)
	return len(p), nil
}

// TestReceiveNar checks the digests of a received NAR, and that each way
// an upload can fail is told apart: the body, the sink, or the content.
func TestReceiveNar(t *testing.T) {
	var zd zstdDecoders
	for _, size := range []int{100, 200 << 10, 3 << 20} {
		nar := fakeNar(size)
		file := zstdBytes(t, nar)
		for _, known := range []bool{true, false} {
			t.Run(fmt.Sprintf("%d bytes, length known %v", size, known), func(t *testing.T) {
				length := int64(-1)
				if known {
					length = int64(len(file))
				}
				var sink bytes.Buffer
				d, err := receiveNar(t.Context(), &zd, &sink, bytes.NewReader(file), length, "zstd", 1<<30)
				if err != nil {
					t.Fatal(err)
				}
				want := narDigest{compression: "zstd", fileHash: sha(file), fileSize: int64(len(file)), narHash: sha(nar), narSize: int64(len(nar))}
				if d != want {
					t.Errorf("digest %+v, want %+v", d, want)
				}
				if !bytes.Equal(sink.Bytes(), file) {
					t.Errorf("sink got %d bytes, not the %d of the file", sink.Len(), len(file))
				}
			})
		}
	}

	nar := fakeNar(1 << 20)
	file := zstdBytes(t, nar)
	var bodyErr *bodyError
	var sinkErr *sinkError
	for _, tc := range []struct {
		name  string
		body  io.Reader
		sink  io.Writer
		max   int64
		check func(error) bool
	}{
		{"cut off", &failAfter{bytes.NewReader(file[:len(file)/2]), io.ErrUnexpectedEOF}, io.Discard, 1 << 30,
			func(err error) bool { return errors.As(err, &bodyErr) }},
		{"too large", bytes.NewReader(file), io.Discard, int64(len(file) / 2),
			func(err error) bool { return errors.As(err, &bodyErr) && errors.Is(err, errTooLarge) }},
		{"disk full", bytes.NewReader(file), &fullDisk{}, 1 << 30,
			func(err error) bool { return errors.As(err, &sinkErr) }},
		{"not zstd", bytes.NewReader(nar), io.Discard, 1 << 30,
			func(err error) bool { return err != nil && !errors.As(err, &bodyErr) && !errors.As(err, &sinkErr) }},
		{"not a NAR", bytes.NewReader(zstdBytes(t, bytes.Repeat([]byte("x"), 1000))), io.Discard, 1 << 30,
			func(err error) bool { return err != nil && !errors.As(err, &bodyErr) && !errors.As(err, &sinkErr) }},
		{"trailing garbage", io.MultiReader(bytes.NewReader(file), bytes.NewReader([]byte("garbage"))), io.Discard, 1 << 30,
			func(err error) bool { return err != nil && !errors.As(err, &bodyErr) && !errors.As(err, &sinkErr) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := receiveNar(t.Context(), &zd, tc.sink, tc.body, -1, "zstd", tc.max)
			if !tc.check(err) {
				t.Errorf("error %T %v: not the right kind", err, err)
			}
		})
	}
}

// BenchmarkReceiveNar: the server's work per uploaded NAR (zstd), small and
// big. MB/s are of the NAR, decompressed.
func BenchmarkReceiveNar(b *testing.B) {
	var zd zstdDecoders
	for _, size := range []int{4 << 10, 64 << 20} {
		nar := fakeNar(size)
		file := zstdBytes(b, nar)
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				if _, err := receiveNar(b.Context(), &zd, io.Discard, bytes.NewReader(file), int64(len(file)), "zstd", 1<<40); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
