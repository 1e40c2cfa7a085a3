package cache

import (
	"errors"
	"math"
	"testing"
)

func TestParseRange(t *testing.T) {
	tests := []struct {
		h           string
		size        int64
		off, len    int64
		wantErr     bool
		unsatisfied bool
	}{
		{"bytes=0-9", 100, 0, 10, false, false},
		{"bytes=10-", 100, 10, 90, false, false},
		{"bytes=-10", 100, 90, 10, false, false},
		{"bytes=-1000", 100, 0, 100, false, false},
		{"bytes=90-1000", 100, 90, 10, false, false},
		{"bytes=100-", 100, 0, 0, true, true},
		{"bytes=-0", 100, 0, 0, true, true},
		{"bytes=-5", 0, 0, 0, true, true},
		{"bytes=0-", 0, 0, 0, true, true},
		{"bytes=5-1", 100, 0, 0, true, false},
		{"bytes=+5-", 100, 0, 0, true, false},
		{"bytes=-+5", 100, 0, 0, true, false},
		{"bytes=0-1,3-4", 100, 0, 0, true, false},
		{"items=0-1", 100, 0, 0, true, false},
		{"bytes=a-b", 100, 0, 0, true, false},
	}
	for _, tt := range tests {
		off, n, err := parseRange(tt.h, tt.size)
		if (err != nil) != tt.wantErr || errors.Is(err, errUnsatisfiable) != tt.unsatisfied || err == nil && (off != tt.off || n != tt.len) {
			t.Errorf("parseRange(%q, %d) = %d, %d, %v; want %d, %d, error %v (unsatisfiable %v)", tt.h, tt.size, off, n, err, tt.off, tt.len, tt.wantErr, tt.unsatisfied)
		}
	}
}

// FuzzParseRange: an accepted range is non-empty and lies inside the file.
func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"bytes=0-9", "bytes=10-", "bytes=-10", "bytes=-0", "bytes=5-1", "bytes=0-1,3-4", "bytes= 1-2 ", "bytes=-", "bytes=9223372036854775807-", "bytes=-9223372036854775808"} {
		f.Add(s, int64(100))
		f.Add(s, int64(0))
	}
	f.Add("bytes=0-", int64(math.MaxInt64))
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size < 0 {
			return // sizes come from the store database, never negative
		}
		off, n, err := parseRange(h, size)
		if err != nil {
			return
		}
		if off < 0 || n < 1 || off > size-n {
			t.Fatalf("parseRange(%q, %d) = offset %d, length %d: outside the file", h, size, off, n)
		}
	})
}
