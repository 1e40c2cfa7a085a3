package auth

import (
	"sync"
	"time"
)

// Limiter counts failed attempts per source address in fixed windows and
// says when an address has had too many. Its memory is bounded: at most
// MaxAddrs addresses are tracked; when full, expired windows are dropped
// first, then the table is cleared (an attacker cycling addresses gains a
// fresh window, but cannot exhaust memory).
type Limiter struct {
	Max      int           // failures allowed per window
	Window   time.Duration // window length
	MaxAddrs int
	Now      func() time.Time

	mu    sync.Mutex
	addrs map[string]*window
}

type window struct {
	start time.Time
	n     int
}

// NewLimiter allows max failures per window per address.
func NewLimiter(max int, per time.Duration) *Limiter {
	return &Limiter{Max: max, Window: per, MaxAddrs: 100000, Now: time.Now, addrs: map[string]*window{}}
}

// Blocked reports whether addr has used up its failures, and when it may
// try again.
func (l *Limiter) Blocked(addr string) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.addrs[addr]
	if w == nil {
		return false, 0
	}
	now := l.Now()
	if end := w.start.Add(l.Window); !now.Before(end) {
		delete(l.addrs, addr)
		return false, 0
	} else if w.n >= l.Max {
		return true, end.Sub(now)
	}
	return false, 0
}

// Fail records a failed attempt from addr.
func (l *Limiter) Fail(addr string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.Now()
	w := l.addrs[addr]
	if w == nil || !now.Before(w.start.Add(l.Window)) {
		if w == nil && len(l.addrs) >= l.MaxAddrs {
			l.prune(now)
		}
		w = &window{start: now}
		l.addrs[addr] = w
	}
	w.n++
}

func (l *Limiter) prune(now time.Time) {
	for a, w := range l.addrs {
		if !now.Before(w.start.Add(l.Window)) {
			delete(l.addrs, a)
		}
	}
	if len(l.addrs) >= l.MaxAddrs {
		clear(l.addrs)
	}
}
