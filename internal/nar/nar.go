// Package nar serialises a filesystem tree into Nix's NAR format, streaming
// from the filesystem in constant memory, optionally only a byte window of it.
package nar

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sync"
)

// sendfileMin is the file size from which contents bypass the buffer and go
// straight to the destination's ReadFrom (sendfile for a TCP connection).
const sendfileMin = 128 << 10

// bufPool recycles the write buffers of NAR streams: a cache serves
// thousands of small NARs a second, and a fresh 64 KiB buffer each (zeroed
// by the allocator) was a tenth of the cost of serving one.
var bufPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 64<<10) }}

// errDone stops the walk once the requested window has been written.
var errDone = errors.New("nar: window written")

// Dump writes the NAR serialisation of path to w.
func Dump(w io.Writer, path string) (int64, error) {
	return DumpRange(w, path, 0, -1)
}

// DumpRange writes length bytes of the NAR of path starting at offset
// (length < 0: to the end). Files wholly before the window are never read,
// so a resumed download costs what it sends, not what it skips.
func DumpRange(w io.Writer, path string, offset, length int64) (int64, error) {
	d := newDumper(w, offset, length)
	defer d.release()
	err := d.dump(path)
	if errors.Is(err, errDone) {
		err = nil
	}
	if ferr := d.bw.Flush(); err == nil {
		err = ferr
	}
	return d.written, err
}

// Size returns the size of the NAR of path without reading file contents.
func Size(path string) (int64, error) {
	d := newDumper(io.Discard, math.MaxInt64, -1)
	defer d.release()
	err := d.dump(path)
	return d.pos, err
}

type dumper struct {
	out     io.Writer
	bw      *bufio.Writer
	pos     int64 // position in the NAR
	start   int64 // window start
	end     int64 // window end, -1 for none
	written int64
	// onFile, when set, is told where each regular file's contents start.
	onFile func(path string, size int64, executable bool, offset int64)
}

func newDumper(w io.Writer, offset, length int64) *dumper {
	end := int64(-1)
	if length >= 0 {
		end = offset + length
	}
	bw := bufPool.Get().(*bufio.Writer)
	bw.Reset(w)
	return &dumper{out: w, bw: bw, start: offset, end: end}
}

// release returns the buffer; the dumper must not be used afterwards.
func (d *dumper) release() {
	d.bw.Reset(nil)
	bufPool.Put(d.bw)
	d.bw = nil
}

// emit writes the part of b that falls inside the window.
func (d *dumper) emit(b []byte) error {
	lo, hi := d.pos, d.pos+int64(len(b))
	d.pos = hi
	if d.end >= 0 && lo >= d.end {
		return errDone
	}
	if hi <= d.start {
		return nil
	}
	if lo < d.start {
		b = b[d.start-lo:]
	}
	if d.end >= 0 && hi > d.end {
		b = b[:int64(len(b))-(hi-d.end)]
	}
	n, err := d.bw.Write(b)
	d.written += int64(n)
	return err
}

var zeros [8]byte

func (d *dumper) str(s string) error {
	var hdr [8]byte
	binary.LittleEndian.PutUint64(hdr[:], uint64(len(s)))
	if err := d.emit(hdr[:]); err != nil {
		return err
	}
	if err := d.emit([]byte(s)); err != nil {
		return err
	}
	return d.pad(int64(len(s)))
}

func (d *dumper) pad(n int64) error {
	if r := n % 8; r != 0 {
		return d.emit(zeros[:8-r])
	}
	return nil
}

func (d *dumper) strs(ss ...string) error {
	for _, s := range ss {
		if err := d.str(s); err != nil {
			return err
		}
	}
	return nil
}

func (d *dumper) dump(path string) error {
	if err := d.str("nix-archive-1"); err != nil {
		return err
	}
	return d.node(path)
}

func (d *dumper) node(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if err := d.strs("(", "type"); err != nil {
		return err
	}
	switch mode := fi.Mode(); {
	case mode.IsRegular():
		if err := d.regular(path, fi); err != nil {
			return err
		}
	case mode&fs.ModeSymlink != 0:
		target, err := os.Readlink(path)
		if err != nil {
			return err
		}
		if err := d.strs("symlink", "target", target); err != nil {
			return err
		}
	case mode.IsDir():
		if err := d.directory(path); err != nil {
			return err
		}
	default:
		return fmt.Errorf("nar: %s: unsupported file type %s", path, mode.Type())
	}
	return d.str(")")
}

func (d *dumper) regular(path string, fi fs.FileInfo) error {
	exec := fi.Mode()&0o100 != 0
	if err := d.str("regular"); err != nil {
		return err
	}
	if exec {
		if err := d.strs("executable", ""); err != nil {
			return err
		}
	}
	if err := d.str("contents"); err != nil {
		return err
	}
	size := fi.Size()
	var hdr [8]byte
	binary.LittleEndian.PutUint64(hdr[:], uint64(size))
	if err := d.emit(hdr[:]); err != nil {
		return err
	}
	if d.onFile != nil {
		d.onFile(path, size, exec, d.pos)
	}
	if err := d.contents(path, size); err != nil {
		return err
	}
	return d.pad(size)
}

// contents copies the part of a file's bytes that overlaps the window.
func (d *dumper) contents(path string, size int64) error {
	lo, hi := d.pos, d.pos+size
	if d.end >= 0 && lo >= d.end {
		return errDone
	}
	from, to := max(lo, d.start), hi
	if d.end >= 0 {
		to = min(hi, d.end)
	}
	d.pos = hi
	if from >= to {
		return nil
	}
	f, err := open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if from > lo {
		if _, err := f.Seek(from-lo, io.SeekStart); err != nil {
			return err
		}
	}
	n := to - from
	var dst io.Writer = d.bw
	if n >= sendfileMin {
		// Flush what is buffered, then let the destination pull the file
		// itself: net/http's ReadFrom turns this into sendfile(2).
		if err := d.bw.Flush(); err != nil {
			return err
		}
		dst = d.out
	}
	c, err := io.Copy(dst, io.LimitReader(f, n))
	d.written += c
	if err == nil && c != n {
		err = fmt.Errorf("nar: %s changed size while being read", path)
	}
	return err
}

func (d *dumper) directory(path string) error {
	if err := d.str("directory"); err != nil {
		return err
	}
	f, err := open(path)
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return err
	}
	sortStrings(names)
	for _, name := range names {
		if err := d.strs("entry", "(", "name", name, "node"); err != nil {
			return err
		}
		if err := d.node(filepath.Join(path, name)); err != nil {
			return err
		}
		if err := d.str(")"); err != nil {
			return err
		}
	}
	return nil
}
