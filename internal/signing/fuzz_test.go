package signing

import (
	"encoding/base64"
	"strings"
	"testing"
	"unicode"
)

// validNameProperty is what every parsed key's name must satisfy: it is
// written into narinfo Sig lines and HTTP headers.
func validNameProperty(t *testing.T, name string) {
	t.Helper()
	if name == "" || strings.ContainsFunc(name, func(r rune) bool { return r == ':' || unicode.IsSpace(r) || unicode.IsControl(r) }) {
		t.Fatalf("accepted key name %q", name)
	}
}

func keySeeds(f *testing.F) {
	for _, s := range []string{
		nixSecret, nixSecret + "\n", nixPublic, " " + nixPublic + "\r\n",
		"test:", ":AAAA", "test", "a:b:c", "te st:" + strings.TrimPrefix(nixPublic, "test:"),
		"test:" + strings.TrimPrefix(nixPublic, "test:")[:20], "test:!!!!",
		"x\v:" + strings.TrimPrefix(nixPublic, "test:"), "x\x00y:" + strings.TrimPrefix(nixSecret, "test:"),
		// The secret key with its public half replaced by another key's.
		"test:" + base64.StdEncoding.EncodeToString(append(mustDecode(strings.TrimPrefix(nixSecret, "test:"))[:32], make([]byte, 32)...)),
	} {
		f.Add(s)
	}
}

func mustDecode(s string) []byte {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// FuzzParseSecretKey: a parsed secret key has a valid name, writes back a
// text that parses to the same key, and signs what its public key verifies.
func FuzzParseSecretKey(f *testing.F) {
	keySeeds(f)
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseSecretKey(s)
		if err != nil {
			return
		}
		validNameProperty(t, k.Name)
		again, err := ParseSecretKey(k.String())
		if err != nil || again.String() != k.String() || again.Name != k.Name {
			t.Fatalf("ParseSecretKey(%q) = %v, %v; want the key back", k.String(), again, err)
		}
		pub, err := ParsePublicKey(k.Public().String())
		if err != nil {
			t.Fatalf("public half %q does not parse: %v", k.Public().String(), err)
		}
		msg := []byte(s)
		if sig := k.Sign(msg); !pub.Verify(msg, sig) {
			t.Fatalf("signature %q by %q does not verify", sig, k.Name)
		}
	})
}

// FuzzParsePublicKey: a parsed public key has a valid name and writes back
// a text that parses to the same key.
func FuzzParsePublicKey(f *testing.F) {
	keySeeds(f)
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParsePublicKey(s)
		if err != nil {
			return
		}
		validNameProperty(t, k.Name)
		again, err := ParsePublicKey(k.String())
		if err != nil || again.String() != k.String() || again.Name != k.Name {
			t.Fatalf("ParsePublicKey(%q) = %v, %v; want the key back", k.String(), again, err)
		}
	})
}

// FuzzVerify: signatures come from narinfo files and headers. Ed25519
// signing is deterministic and Verify refuses non-canonical signatures,
// so only the signature Sign makes may verify.
func FuzzVerify(f *testing.F) {
	sk, err := ParseSecretKey(nixSecret)
	if err != nil {
		f.Fatal(err)
	}
	pk := sk.Public()
	msg := []byte("1;/nix/store/x;sha256:y;1;")
	good := sk.Sign(msg)
	for _, s := range []string{good, "", "test:", "other" + strings.TrimPrefix(good, "test"), good[:len(good)-4], good + "AAAA", "test:!!", strings.Replace(good, "test:", "test:\n", 1)} {
		f.Add(msg, s)
	}
	f.Fuzz(func(t *testing.T, m []byte, sig string) {
		if !pk.Verify(m, sig) {
			return
		}
		name, b64, _ := strings.Cut(sig, ":")
		raw, err := base64.StdEncoding.DecodeString(b64)
		want := mustDecode(strings.TrimPrefix(sk.Sign(m), "test:"))
		if name != "test" || err != nil || string(raw) != string(want) {
			t.Fatalf("Verify(%q, %q) accepted a signature Sign does not make", m, sig)
		}
	})
}
