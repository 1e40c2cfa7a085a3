package keygen

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/signing"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
	"github.com/crystal-forge/crystal-forge/internal/testsupport/testenv"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestCreatesKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "harmonia")
	file := filepath.Join(dir, "cache-key")
	res, err := Ensure(Options{KeyFile: file, Name: "build-server", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Created {
		t.Error("Created = false for a new key")
	}
	st, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key mode = %o, want 600", st.Mode().Perm())
	}
	dst, _ := os.Stat(dir)
	if dst.Mode().Perm() != 0o700 {
		t.Errorf("directory mode = %o, want 700", dst.Mode().Perm())
	}
	b, _ := os.ReadFile(file)
	k, err := signing.ParseSecretKey(string(b))
	if err != nil {
		t.Fatalf("written key does not parse: %v", err)
	}
	if k.Name != "build-server" || !strings.HasPrefix(res.Key.Public().String(), "build-server:") {
		t.Errorf("key name = %q, public %q", k.Name, res.Key.Public())
	}
	if strings.Count(string(b), "\n") != 1 || !strings.HasSuffix(string(b), "\n") {
		t.Errorf("key file should be one line: %q", b)
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, ".cache-key-*"))
	if len(leftovers) != 0 {
		t.Errorf("temporary files left behind: %v", leftovers)
	}
}

func TestIdempotent(t *testing.T) {
	file := filepath.Join(t.TempDir(), "cache-key")
	first, err := Ensure(Options{KeyFile: file, Name: "a", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(file)
	st1, _ := os.Stat(file)
	// A different name on the second run must not matter: the key exists.
	second, err := Ensure(Options{KeyFile: file, Name: "b", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(file)
	st2, _ := os.Stat(file)
	if second.Created {
		t.Error("second run reports Created")
	}
	if !bytes.Equal(before, after) || st1.Mode() != st2.Mode() || !st1.ModTime().Equal(st2.ModTime()) {
		t.Error("second run changed the key file")
	}
	if first.Key.Public().String() != second.Key.Public().String() {
		t.Error("second run returned another key")
	}
}

func TestExistingKeyModeLeftAlone(t *testing.T) {
	file := filepath.Join(t.TempDir(), "cache-key")
	k, err := signing.Generate("x", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(k.String()), 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := Ensure(Options{KeyFile: file, Name: "x", Logger: quiet()}); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(file); st.Mode().Perm() != 0o400 {
		t.Errorf("existing key's mode changed to %o", st.Mode().Perm())
	}
}

func TestConcurrentFirstRuns(t *testing.T) {
	file := filepath.Join(t.TempDir(), "cache-key")
	const n = 8
	pubs := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			res, err := Ensure(Options{KeyFile: file, Name: "race", Logger: quiet()})
			if err != nil {
				t.Error(err)
				return
			}
			pubs[i] = res.Key.Public().String()
		})
	}
	wg.Wait()
	for _, p := range pubs {
		if p != pubs[0] {
			t.Fatalf("concurrent runs disagree on the key: %v", pubs)
		}
	}
	b, _ := os.ReadFile(file)
	if k, err := signing.ParseSecretKey(string(b)); err != nil || k.Public().String() != pubs[0] {
		t.Errorf("file holds another key than the one returned: %v", err)
	}
}

// TestKeyReadableByOthers: a key that group or others can read (or write)
// is refused with a message saying how to fix it, through a symlink too,
// and is left as it was.
func TestKeyReadableByOthers(t *testing.T) {
	k, _ := signing.Generate("x", nil)
	for _, tt := range []struct {
		mode    os.FileMode
		symlink bool
		wantErr bool
	}{
		{0o600, false, false},
		{0o400, false, false},
		{0o600, true, false},
		{0o640, false, true},
		{0o604, false, true},
		{0o620, false, true},
		{0o644, false, true},
		{0o777, false, true},
		{0o644, true, true},
	} {
		t.Run(fmt.Sprintf("%04o symlink=%v", tt.mode, tt.symlink), func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, "cache-key")
			if err := os.WriteFile(file, []byte(k.String()+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(file, tt.mode); err != nil {
				t.Fatal(err)
			}
			use := file
			if tt.symlink {
				use = filepath.Join(dir, "link")
				if err := os.Symlink(file, use); err != nil {
					t.Fatal(err)
				}
			}
			res, err := Ensure(Options{KeyFile: use, Name: "x", Logger: quiet()})
			if !tt.wantErr {
				if err != nil || res.Key.String() != k.String() {
					t.Fatalf("Ensure = %v, want the existing key", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Ensure accepted the key")
			}
			for _, want := range []string{use, fmt.Sprintf("mode %04o", tt.mode), "chmod 600 " + use} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if st, _ := os.Stat(file); st.Mode().Perm() != tt.mode {
				t.Errorf("mode changed to %04o", st.Mode().Perm())
			}
		})
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	corrupt := filepath.Join(dir, "corrupt")
	if err := os.WriteFile(corrupt, []byte("build-server:not-base64!!\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(dir, "truncated")
	if err := os.WriteFile(truncated, []byte("build-server:AAAA\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	asDir := filepath.Join(dir, "is-a-dir")
	if err := os.Mkdir(asDir, 0o700); err != nil {
		t.Fatal(err)
	}
	notADir := filepath.Join(dir, "file")
	if err := os.WriteFile(notADir, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name, file string
		want       []string
	}{
		{"corrupt", corrupt, []string{"corrupt", "delete it", "trust the new public key"}},
		{"truncated", truncated, []string{"corrupt", "delete it"}},
		{"unreadable", asDir, []string{asDir}},
		{"unwritable directory", filepath.Join(notADir, "sub", "key"), []string{"create key directory", "choose another --key-file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := os.ReadFile(tt.file)
			_, err := Ensure(Options{KeyFile: tt.file, Name: "x", Logger: quiet()})
			if err == nil {
				t.Fatal("Ensure succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if after, _ := os.ReadFile(tt.file); !bytes.Equal(before, after) {
				t.Error("a bad key file was modified")
			}
		})
	}
}

func TestUnwritableDirectoryAsUser(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root can write any directory; the not-a-directory case in TestErrors covers root")
	}
	dir := filepath.Join(t.TempDir(), "ro")
	if err := os.Mkdir(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	_, err := Ensure(Options{KeyFile: filepath.Join(dir, "key"), Name: "x", Logger: quiet()})
	if err == nil || !strings.Contains(err.Error(), "writable") {
		t.Errorf("err = %v, want it to say the directory must be writable", err)
	}
}

func TestOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to another user needs root")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	dir := filepath.Join(t.TempDir(), "keys")
	file := filepath.Join(dir, "cache-key")
	if _, err := Ensure(Options{KeyFile: file, Name: "x", Owner: "nobody:" + groupName(t, nobody.Gid), Logger: quiet()}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{file, dir} {
		st, _ := os.Stat(p)
		if uid := st.Sys().(*syscall.Stat_t).Uid; strconv.Itoa(int(uid)) != nobody.Uid {
			t.Errorf("%s owned by uid %d, want %s", p, uid, nobody.Uid)
		}
	}

	// An unknown owner warns and goes on: the key is still created.
	var logs bytes.Buffer
	other := filepath.Join(t.TempDir(), "cache-key")
	res, err := Ensure(Options{KeyFile: other, Name: "x", Owner: "no-such-user-cf:no-such-group", Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil || !res.Created {
		t.Fatalf("Ensure with an unknown owner: %v", err)
	}
	if !strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("no warning logged for a failed chown:\n%s", logs.String())
	}
}

func groupName(t *testing.T, gid string) string {
	g, err := user.LookupGroupId(gid)
	if err != nil {
		t.Skip("cannot resolve nobody's group")
	}
	return g.Name
}

// TestNixAcceptsKey signs a real store path with Nix using our key file and
// checks that Nix trusts the signature under our public key, and not under
// another.
func TestNixAcceptsKey(t *testing.T) {
	testsupport.RequireNix(t) // the tests' offline settings and the preflight build
	nix := testenv.LookPath(t, "`make test` installs nix-bin", "nix")
	dir := t.TempDir()
	res, err := Ensure(Options{KeyFile: filepath.Join(dir, "cache-key"), Name: "cf-keygen-test", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	// Our public key must be what Nix derives from our secret key.
	cmd := exec.Command(nix, "key", "convert-secret-to-public")
	cmd.Stdin = strings.NewReader(res.Key.String())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix key convert-secret-to-public: %v", err)
	}
	if got := strings.TrimSpace(string(out)); got != res.Key.Public().String() {
		t.Fatalf("Nix derives public key %q, we print %q", got, res.Key.Public())
	}

	expr := filepath.Join(dir, "p.nix")
	if err := os.WriteFile(expr, []byte(`derivation { name = "cf-keygen-test"; system = builtins.currentSystem; builder = "/bin/sh"; args = ["-c" "echo `+strconv.Itoa(os.Getpid())+dir+` > $out"]; }`), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command("nix-build", expr, "--no-out-link").Output()
	if err != nil {
		t.Fatalf("nix-build: %v", err)
	}
	path := strings.TrimSpace(string(out))
	if out, err := exec.Command(nix, "store", "sign", "--key-file", filepath.Join(dir, "cache-key"), path).CombinedOutput(); err != nil {
		t.Fatalf("nix store sign: %v\n%s", err, out)
	}
	verify := func(pub string) error {
		return exec.Command(nix, "store", "verify", "--no-contents", "--sigs-needed", "1", "--option", "trusted-public-keys", pub, path).Run()
	}
	if err := verify(res.Key.Public().String()); err != nil {
		t.Errorf("Nix does not trust the path signed with our key: %v", err)
	}
	other, _ := signing.Generate("cf-keygen-test", nil)
	if err := verify(other.Public().String()); err == nil {
		t.Error("Nix trusts the signature under an unrelated key")
	}
}
