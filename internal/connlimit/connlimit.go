// Package connlimit bounds the connections one client address may hold
// open on a listener, so one client (or 383 idle keep-alives from it)
// cannot use up the server's file descriptors and lock everyone else out.
package connlimit

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Listener accepts connections from its inner listener and closes at once
// those from an address that already holds PerClient of them.
type Listener struct {
	net.Listener
	PerClient int
	Logger    *slog.Logger

	mu       sync.Mutex
	open     map[netip.Addr]int
	lastWarn time.Time
}

// New wraps ln; perClient <= 0 leaves ln unbounded (it is returned as is).
func New(ln net.Listener, perClient int, log *slog.Logger) net.Listener {
	if perClient <= 0 {
		return ln
	}
	if log == nil {
		log = slog.Default()
	}
	return &Listener{Listener: ln, PerClient: perClient, Logger: log, open: map[netip.Addr]int{}}
}

// Accept returns the next connection within its client's bound.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		addr := clientAddr(c.RemoteAddr())
		l.mu.Lock()
		if l.open[addr] >= l.PerClient {
			warn := time.Since(l.lastWarn) > 10*time.Second
			if warn {
				l.lastWarn = time.Now()
			}
			l.mu.Unlock()
			// Closing without a word is all a flood deserves; the log
			// says why, at most every 10 seconds.
			c.Close()
			if warn {
				l.Logger.Warn("connection refused: too many from one client", "client", addr.String(), "limit", l.PerClient)
			}
			continue
		}
		l.open[addr]++
		l.mu.Unlock()
		return &conn{Conn: c, l: l, addr: addr}, nil
	}
}

func (l *Listener) release(addr netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[addr]--; l.open[addr] <= 0 {
		delete(l.open, addr)
	}
}

// Open returns how many connections addr holds (for tests and metrics).
func (l *Listener) Open(addr netip.Addr) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open[addr]
}

func clientAddr(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			return ip.Unmap()
		}
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

type conn struct {
	net.Conn
	l    *Listener
	addr netip.Addr
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.addr) })
	return err
}
