package objstore_test

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/objstore"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// TestPutObjects stores a File and bytes together on every backend: both
// arrive, the file is gone from its path.
func TestPutObjects(t *testing.T) {
	for name, open := range testsupport.StorageBackends() {
		t.Run(name, func(t *testing.T) {
			s := open(t)
			nar := bytes.Repeat([]byte("nar bytes "), 1000)
			file := filepath.Join(t.TempDir(), "upload.nar")
			if err := os.WriteFile(file, nar, 0o600); err != nil {
				t.Fatal(err)
			}
			objs := []objstore.Object{
				{Key: "nar/x.nar", File: file},
				{Key: "x.narinfo", Data: []byte("StorePath: /nix/store/x\n")},
			}
			if err := objstore.PutObjects(t.Context(), s, objs); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(file); !os.IsNotExist(err) {
				t.Errorf("the file is still at %s after PutObjects (%v)", file, err)
			}
			for _, o := range objs {
				want := o.Data
				if o.File != "" {
					want = nar
				}
				if got, err := objstore.ReadAll(t.Context(), s, o.Key); err != nil || !bytes.Equal(got, want) {
					t.Errorf("object %s: %d bytes (%v), want %d", o.Key, len(got), err, len(want))
				}
			}
		})
	}
}

// TestDirPutObjects: a file is moved into place when it can be renamed and
// copied (then removed) from another filesystem; objects get Put's mode;
// a bad key stores nothing and leaves the file and no staging litter.
func TestDirPutObjects(t *testing.T) {
	root := filepath.Join(t.TempDir(), "cache")
	d, err := objstore.OpenDir(root)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("nar bytes "), 1000)
	dirs := map[string]string{"staging area": d.StagingDir(), "same filesystem": t.TempDir()}
	// /dev/shm is a tmpfs on Linux: another filesystem than t.TempDir().
	if shm, err := os.MkdirTemp("/dev/shm", "cf-putobjects-"); err == nil {
		t.Cleanup(func() {
			if err := os.RemoveAll(shm); err != nil {
				t.Error(err)
			}
		})
		if dev(t, shm) != dev(t, root) {
			dirs["other filesystem"] = shm
		}
	}
	if _, ok := dirs["other filesystem"]; !ok {
		t.Log("no second filesystem here (/dev/shm): the copy case is not exercised")
	}
	for name, dir := range dirs {
		t.Run(name, func(t *testing.T) {
			file := filepath.Join(dir, "upload.nar")
			if err := os.WriteFile(file, data, 0o600); err != nil {
				t.Fatal(err)
			}
			key := "nar/" + filepath.Base(dir) + ".nar"
			info := filepath.Base(dir) + ".narinfo"
			if err := d.PutObjects(t.Context(), []objstore.Object{{Key: key, File: file}, {Key: info, Data: []byte("info")}}); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(file); !os.IsNotExist(err) {
				t.Errorf("the file is still at %s after PutObjects (%v)", file, err)
			}
			if got, err := objstore.ReadAll(t.Context(), d, key); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("object %s: %d bytes (%v), want %d", key, len(got), err, len(data))
			}
			for _, k := range []string{key, info} {
				fi, err := os.Stat(filepath.Join(root, filepath.FromSlash(k)))
				if err != nil || fi.Mode().Perm() != 0o644 {
					t.Errorf("object file %s: mode %v (%v), want 0644 like Put's", k, fi.Mode(), err)
				}
			}
		})
	}
	t.Run("bad key", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "upload.nar")
		if err := os.WriteFile(file, data, 0o600); err != nil {
			t.Fatal(err)
		}
		before := testsupport.StoreKeys(t, d)
		objs := []objstore.Object{{Key: "nar/fine.nar", Data: data}, {Key: "nar/good.nar", File: file}, {Key: "../escape.narinfo", Data: []byte("x")}}
		if err := d.PutObjects(t.Context(), objs); err == nil {
			t.Fatal("PutObjects with key ../escape.narinfo succeeded")
		}
		if _, err := os.Stat(file); err != nil {
			t.Errorf("a refused PutObjects lost the file: %v", err)
		}
		if after := testsupport.StoreKeys(t, d); !slices.Equal(after, before) {
			t.Errorf("a refused PutObjects stored %q (before: %q)", after, before)
		}
		if left, err := os.ReadDir(d.StagingDir()); err != nil || len(left) != 0 {
			t.Errorf("staging area after a refused PutObjects: %v %v", left, err)
		}
	})
}

// TestOpenDirStaging: opening a directory removes the staging area's
// litter of a crash, but not what another process is writing right now.
func TestOpenDirStaging(t *testing.T) {
	root := filepath.Join(t.TempDir(), "cache")
	d, err := objstore.OpenDir(root)
	if err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(d.StagingDir(), "upload-crashed.nar")
	young := filepath.Join(d.StagingDir(), "upload-in-progress.nar")
	for _, f := range []string{old, young} {
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	then := time.Now().Add(-objstore.StagingLitterAge - time.Minute)
	if err := os.Chtimes(old, then, then); err != nil {
		t.Fatal(err)
	}
	if _, err := objstore.OpenDir(root); err != nil { // as cache gc would, beside the server
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("a staging file older than %v survived OpenDir (%v)", objstore.StagingLitterAge, err)
	}
	if _, err := os.Stat(young); err != nil {
		t.Errorf("OpenDir removed a staging file still being written: %v", err)
	}
}

func dev(t *testing.T, path string) uint64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Dev
}
