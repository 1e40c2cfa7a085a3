package signing

import (
	"strings"
	"testing"
)

// A key pair printed by Nix 2.8: `nix key generate-secret --key-name test`
// and `nix key convert-secret-to-public`.
const (
	nixSecret = "test:gTMRN7bwrLx1VFcd8VrW4iwyvpwK3s/lxVGTdsoyIStTO6QPKhR/7D0ShynSGyDTTvjbQi1lS5Ker9g3SLBF/A=="
	nixPublic = "test:UzukDyoUf+w9Eocp0hsg007420ItZUuSnq/YN0iwRfw="
)

func TestParseNixKey(t *testing.T) {
	sk, err := ParseSecretKey(nixSecret + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if got := sk.String(); got != nixSecret {
		t.Errorf("String() = %q, want %q", got, nixSecret)
	}
	if got := sk.Public().String(); got != nixPublic {
		t.Errorf("Public() = %q, want %q", got, nixPublic)
	}
	pk, err := ParsePublicKey(nixPublic)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("1;/nix/store/x;sha256:y;1;")
	sig := sk.Sign(msg)
	if !strings.HasPrefix(sig, "test:") {
		t.Errorf("signature %q lacks the key name", sig)
	}
	if !pk.Verify(msg, sig) {
		t.Error("signature does not verify")
	}
	if pk.Verify([]byte("other"), sig) {
		t.Error("signature verifies for another message")
	}
	if pk.Verify(msg, "other:"+strings.TrimPrefix(sig, "test:")) {
		t.Error("signature verifies under another key name")
	}
}

func TestGenerate(t *testing.T) {
	sk, err := Generate("host-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	again, err := ParseSecretKey(sk.String())
	if err != nil {
		t.Fatalf("generated key does not parse: %v", err)
	}
	if again.Public().String() != sk.Public().String() {
		t.Error("public key changed across a round trip")
	}
	if _, err := Generate("bad:name", nil); err == nil {
		t.Error("Generate accepted a name with ':'")
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", "not of the form"},
		{"no colon", "abc", "not of the form"},
		{"empty name", ":" + strings.Repeat("A", 88), "name is empty"},
		{"bad base64", "k:@@@", "bad base64"},
		{"short", "k:AAAA", "has 3 bytes"},
		{"public as secret", nixPublic, "has 32 bytes"},
		{"inconsistent", "test:gTMRN7bwrLx1VFcd8VrW4iwyvpwK3s/lxVGTdsoyIStTO6QPKhR/7D0ShynSGyDTTvjbQi1lS5Ker8g3SLBF/A==", "inconsistent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseSecretKey(tt.in)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseSecretKey(%q) error = %v, want it to mention %q", tt.in, err, tt.want)
			}
		})
	}
	if _, err := ParsePublicKey(nixSecret); err == nil {
		t.Error("ParsePublicKey accepted a secret key")
	}
}
