//go:build !linux

package http1

import (
	"io"
	"net"
)

// rawIO is the connection itself where raw socket I/O is not implemented.
func rawIO(nc net.Conn) io.ReadWriter { return nc }
