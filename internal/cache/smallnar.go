package cache

import (
	"bytes"
	"sync/atomic"

	"github.com/crystal-forge/crystal-forge/internal/nar"
)

// smallNarMax is the largest NAR kept in memory. Serialising a NAR from
// the store costs an open, read and close per file; a flat-file cache (and
// nginx in front of it) sends one prepared file. A copy of a closure is
// thousands of small NARs, fetched one after another.
const smallNarMax = 64 << 10

// smallNars accounts the memory that cached small NARs hold.
type smallNars struct {
	budget int64
	used   atomic.Int64
}

func (c *smallNars) reserve(n int64) bool {
	if c.used.Add(n) > c.budget {
		c.used.Add(-n)
		return false
	}
	return true
}

// release gives back the entry's NAR memory, once, when the entry leaves
// the narinfo cache or the NAR could not be kept.
func (c *smallNars) release(e *pathEntry) {
	if p := e.nar.Load(); p != nil && e.narReleased.CompareAndSwap(false, true) {
		c.used.Add(-int64(len(*p)))
	}
}

// smallNar returns e's NAR from memory, serialising it on first use, or
// nil when it is too big, the budget is spent, or reading it failed (the
// streaming path then reports the error).
func (s *Server) smallNar(e *pathEntry) []byte {
	if s.smallNars == nil || e.info.NarSize > smallNarMax {
		return nil
	}
	if p := e.nar.Load(); p != nil {
		return *p
	}
	size := int64(e.info.NarSize)
	if !s.smallNars.reserve(size) {
		return nil
	}
	var buf bytes.Buffer
	buf.Grow(int(size))
	if n, err := nar.Dump(&buf, e.real); err != nil || n != size {
		s.smallNars.used.Add(-size)
		return nil
	}
	b := buf.Bytes()
	if !e.nar.CompareAndSwap(nil, &b) {
		s.smallNars.used.Add(-size) // another request kept it first
		return *e.nar.Load()
	}
	// Evicted meanwhile: nobody else will release it.
	if e.evicted.Load() {
		s.smallNars.release(e)
	}
	return b
}
