package nar

import (
	"os"
	"syscall"
)

// open opens a file or directory for reading as a plain blocking file
// descriptor. os.Open would also try to register it with the network
// poller (an fcntl and an epoll_ctl that fails for regular files) — three
// wasted system calls per file, on a path where small NARs are mostly
// system calls.
func open(path string) (*os.File, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}
