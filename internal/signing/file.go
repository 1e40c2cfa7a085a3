package signing

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// LoadSecretKeyFile reads a secret key file. Its errors say how to recover,
// because a server that cannot sign is down until someone acts.
func LoadSecretKeyFile(path string) (*SecretKey, error) {
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("signing key %s does not exist: create it with `crystal-forge keygen --key-file %s`", path, path)
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("signing key %s is not readable by this user: fix its owner or mode (0600, owned by the service user)", path)
	case err != nil:
		return nil, fmt.Errorf("read signing key %s: %w", path, err)
	}
	// Anyone who can read the key can sign paths every client trusts:
	// refuse to use one others can read or replace, rather than warn in a
	// log nobody reads. Stat follows symlinks (secret managers link keys).
	if st, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("check signing key %s: %w", path, err)
	} else if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("signing key %s has mode %04o: it is a secret and must be readable by its owner only; run `chmod 600 %s` (the key itself stays the same)", path, perm, path)
	}
	k, err := ParseSecretKey(string(b))
	if err != nil {
		return nil, fmt.Errorf("signing key %s is corrupt (%v): delete it and run `crystal-forge keygen --key-file %s` to make a new one; every client must then trust the new public key", path, err, path)
	}
	return k, nil
}
