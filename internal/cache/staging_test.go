package cache

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"
)

// TestStagingBuffer: an upload stays in memory up to the limit and moves
// to a file, with everything written so far, once it outgrows it.
func TestStagingBuffer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		limit  int
		writes []int
		inFile bool
	}{
		{"empty", 10, nil, false},
		{"under the limit", 10, []int{3, 4}, false},
		{"exactly the limit", 10, []int{6, 4}, false},
		{"over the limit", 10, []int{6, 5}, true},
		{"one big write", 10, []int{100}, true},
		{"no memory granted", 0, []int{1}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			b := &stagingBuffer{dir: dir, limit: tc.limit}
			var want bytes.Buffer
			for i, n := range tc.writes {
				p := bytes.Repeat([]byte{byte('a' + i)}, n)
				want.Write(p)
				if k, err := b.Write(p); k != n || err != nil {
					t.Fatalf("Write(%d bytes) = %d, %v", n, k, err)
				}
			}
			if err := b.close(slog.Default(), true); err != nil {
				t.Fatal(err)
			}
			if (b.file != nil) != tc.inFile {
				t.Fatalf("in a file: %v, want %v", b.file != nil, tc.inFile)
			}
			got := b.mem
			if b.file != nil {
				if b.mem != nil {
					t.Errorf("%d bytes kept in memory as well as in the file", len(b.mem))
				}
				var err error
				if got, err = os.ReadFile(b.file.Name()); err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(got, want.Bytes()) {
				t.Errorf("staged %q, want %q", got, want.Bytes())
			}
			// Closing without keeping removes the file.
			b2 := &stagingBuffer{dir: dir, limit: tc.limit}
			if _, err := io.Copy(b2, bytes.NewReader(want.Bytes())); err != nil {
				t.Fatal(err)
			}
			if err := b2.close(slog.Default(), false); err != nil {
				t.Fatal(err)
			}
			if left, _ := os.ReadDir(dir); len(left) != map[bool]int{true: 1, false: 0}[tc.inFile] {
				t.Errorf("staging directory holds %d files, want only the kept one", len(left))
			}
		})
	}
}

// TestUploadMemoryBudget: reservations never exceed the budget, and every
// byte reserved comes back when uploads end, are replaced or expire.
func TestUploadMemoryBudget(t *testing.T) {
	tokens, err := ParseTokens([]byte("ci:secret\n"))
	if err != nil {
		t.Fatal(err)
	}
	u, err := newUploads(UploadConfig{Auth: tokens, StagingDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.Default()
	if got := u.reserve(memPendingBytes - 10); got != memPendingBytes-10 {
		t.Fatalf("first reservation = %d", got)
	}
	if got := u.reserve(100); got != 10 {
		t.Fatalf("reservation at the edge of the budget = %d, want the 10 bytes left", got)
	}
	if got := u.reserve(100); got != 0 {
		t.Fatalf("reservation over the budget = %d, want 0", got)
	}
	u.release(memPendingBytes)
	if u.memUsed != 0 {
		t.Fatalf("after releasing all: %d bytes in use", u.memUsed)
	}

	// A kept NAR holds its bytes until taken and dropped, or replaced.
	keep := func(name string, n int) *pendingNar {
		u.reserve(int64(n))
		p := &pendingNar{data: make([]byte, n), received: time.Now()}
		u.add(log, name, p)
		return p
	}
	keep("a.nar", 100)
	keep("b.nar", 50)
	keep("a.nar", 30) // replaces the first a.nar
	if u.memUsed != 80 {
		t.Fatalf("in use with a.nar (30) and b.nar (50): %d", u.memUsed)
	}
	p := u.take("a.nar")
	u.drop(log, p)
	if u.memUsed != 50 {
		t.Fatalf("in use after a.nar was stored: %d, want 50", u.memUsed)
	}
	u.pending["b.nar"].received = u.pending["b.nar"].received.Add(-2 * pendingTTL)
	keep("c.nar", 1) // adding sweeps the expired b.nar
	if u.memUsed != 1 || len(u.pending) != 1 {
		t.Fatalf("after b.nar expired: %d bytes in use, %d pending; want 1, 1", u.memUsed, len(u.pending))
	}
}
