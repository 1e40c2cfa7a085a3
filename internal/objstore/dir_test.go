package objstore_test

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/objstore"
)

// TestDirPutFile: a file is moved into place when it can be renamed, and
// copied (then removed) when it is on another filesystem; a bad key leaves
// the file where it was.
func TestDirPutFile(t *testing.T) {
	root := filepath.Join(t.TempDir(), "cache")
	d, err := objstore.OpenDir(root)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("nar bytes "), 1000)
	dirs := map[string]string{"staging area": d.StagingDir(), "same filesystem": t.TempDir()}
	// /dev/shm is a tmpfs on Linux: another filesystem than t.TempDir().
	if shm, err := os.MkdirTemp("/dev/shm", "cf-putfile-"); err == nil {
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
			if err := d.PutFile(t.Context(), key, file, "application/x-nix-nar"); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(file); !os.IsNotExist(err) {
				t.Errorf("the file is still at %s after PutFile (%v)", file, err)
			}
			got, err := objstore.ReadAll(t.Context(), d, key)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("object %s: %d bytes (%v), want %d", key, len(got), err, len(data))
			}
			fi, err := os.Stat(filepath.Join(root, filepath.FromSlash(key)))
			if err != nil || fi.Mode().Perm() != 0o644 {
				t.Errorf("object file mode %v (%v), want 0644 like Put's", fi.Mode(), err)
			}
		})
	}
	t.Run("bad key", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "upload.nar")
		if err := os.WriteFile(file, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := d.PutFile(t.Context(), "../escape.nar", file, ""); err == nil {
			t.Fatal("PutFile with key ../escape.nar succeeded")
		}
		if _, err := os.Stat(file); err != nil {
			t.Errorf("a refused PutFile lost the file: %v", err)
		}
	})
}

func dev(t *testing.T, path string) uint64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Dev
}
