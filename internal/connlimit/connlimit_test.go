package connlimit

import (
	"io"
	"net"
	"net/netip"
	"testing"
)

// dialFrom connects to ln from the local address ip (any 127/8 address is
// loopback on Linux, so two "clients" can be told apart).
func dialFrom(t *testing.T, ln net.Listener, ip string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	c, err := d.DialContext(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestPerClientBound(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := New(inner, 2, nil).(*Listener)
	defer ln.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	a1, a2 := dialFrom(t, ln, "127.0.0.1"), dialFrom(t, ln, "127.0.0.1")
	s1, s2 := <-accepted, <-accepted
	_, _ = a1, a2
	// The third from the same address is closed by the server: the client
	// reads EOF.
	a3 := dialFrom(t, ln, "127.0.0.1")
	if n, err := a3.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("third connection from one client read %d, %v; want EOF", n, err)
	}
	// Another client is served.
	dialFrom(t, ln, "127.0.0.2")
	if c := <-accepted; clientAddr(c.RemoteAddr()) != netip.MustParseAddr("127.0.0.2") {
		t.Fatalf("accepted %v, want the other client", c.RemoteAddr())
	}
	if n := ln.Open(netip.MustParseAddr("127.0.0.1")); n != 2 {
		t.Fatalf("open from 127.0.0.1 = %d, want 2", n)
	}
	// Closing one (twice: counted once) frees a slot.
	s1.Close()
	s1.Close()
	if n := ln.Open(netip.MustParseAddr("127.0.0.1")); n != 1 {
		t.Fatalf("open after a close = %d, want 1", n)
	}
	dialFrom(t, ln, "127.0.0.1")
	if c := <-accepted; clientAddr(c.RemoteAddr()) != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("accepted %v after a slot freed", c.RemoteAddr())
	}
	s2.Close()
}

func TestUnbounded(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	if ln := New(inner, 0, nil); ln != inner {
		t.Fatal("a bound of 0 wrapped the listener")
	}
}
