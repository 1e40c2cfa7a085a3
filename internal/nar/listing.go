package nar

import (
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Entry is one node of a NAR listing, in the JSON shape Nix writes to
// <hash>.ls files.
type Entry struct {
	Type       string            `json:"type"`
	Size       *int64            `json:"size,omitempty"`
	Executable bool              `json:"executable,omitempty"`
	NarOffset  *int64            `json:"narOffset,omitempty"`
	Target     string            `json:"target,omitempty"`
	Entries    map[string]*Entry `json:"entries,omitzero"`
}

// Listing is the document served as <hash>.ls.
type Listing struct {
	Version int    `json:"version"`
	Root    *Entry `json:"root"`
}

// List describes the tree at path, with each regular file's offset in the NAR.
// File contents are not read.
func List(path string) (*Listing, error) {
	root, err := listNode(path)
	if err != nil {
		return nil, err
	}
	d := newDumper(io.Discard, math.MaxInt64, -1)
	defer d.release()
	d.onFile = func(p string, size int64, exec bool, off int64) {
		rel, _ := filepath.Rel(path, p)
		e := root
		if rel != "." {
			for _, part := range strings.Split(rel, string(filepath.Separator)) {
				e = e.Entries[part]
			}
		}
		e.NarOffset = &off
	}
	if err := d.dump(path); err != nil {
		return nil, err
	}
	return &Listing{Version: 1, Root: root}, nil
}

func listNode(path string) (*Entry, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	switch mode := fi.Mode(); {
	case mode.IsRegular():
		size := fi.Size()
		return &Entry{Type: "regular", Size: &size, Executable: mode&0o100 != 0}, nil
	case mode&fs.ModeSymlink != 0:
		t, err := os.Readlink(path)
		if err != nil {
			return nil, err
		}
		return &Entry{Type: "symlink", Target: t}, nil
	case mode.IsDir():
		f, err := open(path)
		if err != nil {
			return nil, err
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return nil, err
		}
		e := &Entry{Type: "directory", Entries: make(map[string]*Entry, len(names))}
		for _, n := range names {
			c, err := listNode(filepath.Join(path, n))
			if err != nil {
				return nil, err
			}
			e.Entries[n] = c
		}
		return e, nil
	default:
		return nil, &fs.PathError{Op: "list", Path: path, Err: fs.ErrInvalid}
	}
}

// sortStrings sorts byte-wise, the order Nix writes directory entries in.
func sortStrings(s []string) { slices.Sort(s) }
