package http1

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// sysConn reads and writes a connection's non-blocking socket with raw
// system calls, still waiting for readiness (and honouring deadlines and
// Close) through the runtime's network poller.
//
// Why: net.Conn's Read and Write enter the runtime's syscall state on every
// call, and when every P was idle — the normal state between two requests of
// a client like Nix, which sends one at a time — that wakes the runtime's
// monitor thread (sysmon): a futex wake-up and a few context switches per
// request, ~20% of the server's CPU in `perf` during a `nix copy`. A read or
// write on a non-blocking socket cannot block, so it does not need that
// state.
type sysConn struct {
	rc      syscall.RawConn
	buf     []byte
	n       int
	errno   syscall.Errno
	readFn  func(fd uintptr) bool // bound once: no closure per call
	writeFn func(fd uintptr) bool
}

// rawIO returns raw I/O for nc's socket, or nc itself when it has none.
func rawIO(nc net.Conn) io.ReadWriter {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nc
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nc
	}
	s := &sysConn{rc: rc}
	s.readFn, s.writeFn = s.doRead, s.doWrite
	return s
}

func (s *sysConn) doRead(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&s.buf[0])), uintptr(len(s.buf)))
		switch e {
		case 0:
			s.n = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // wait for the poller, then try again
		default:
			s.errno = e
			return true
		}
	}
}

func (s *sysConn) doWrite(fd uintptr) bool {
	for len(s.buf) > 0 {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&s.buf[0])), uintptr(len(s.buf)))
		switch e {
		case 0:
			s.n += int(n)
			s.buf = s.buf[n:]
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			s.errno = e
			return true
		}
	}
	return true
}

func (s *sysConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.buf, s.n, s.errno = p, 0, 0
	err := s.rc.Read(s.readFn)
	s.buf = nil
	switch {
	case err != nil: // deadline, or closed
		return 0, err
	case s.errno != 0:
		return 0, os.NewSyscallError("read", s.errno)
	case s.n == 0:
		return 0, io.EOF
	}
	return s.n, nil
}

func (s *sysConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.buf, s.n, s.errno = p, 0, 0
	err := s.rc.Write(s.writeFn)
	s.buf = nil
	switch {
	case err != nil:
		return s.n, err
	case s.errno != 0:
		return s.n, os.NewSyscallError("write", s.errno)
	}
	return s.n, nil
}
