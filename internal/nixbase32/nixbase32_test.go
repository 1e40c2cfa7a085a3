package nixbase32

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"testing"
)

func TestEncodeKnownValues(t *testing.T) {
	// Values printed by `nix hash to-base32` / `nix-hash --to-base32`.
	tests := []struct {
		hex, want string
	}{
		{"", ""},
		{"1f", "0z"},
		// sha256 of the empty string.
		{"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"},
		// The NAR of `echo hi > $out` as registered by Nix 2.8 in db.sqlite and shown by `nix path-info --json`.
		{"10551daed7fa467d0b58826e7eb9a0f2af7d693de319f2ef775fffcda244b9f6", "1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h"},
	}
	for _, tt := range tests {
		b, _ := hex.DecodeString(tt.hex)
		if got := Encode(b); got != tt.want {
			t.Errorf("Encode(%s) = %q, want %q", tt.hex, got, tt.want)
		}
		back, err := Decode(tt.want)
		if err != nil || !bytes.Equal(back, b) {
			t.Errorf("Decode(%q) = %x, %v; want %s", tt.want, back, err, tt.hex)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	for i := 0; i < 64; i++ {
		sum := sha256.Sum256([]byte{byte(i)})
		b := sum[:i%33]
		got, err := Decode(Encode(b))
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("round trip of %x: %x, %v", b, got, err)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	// "1" and 51 characters are lengths no byte count encodes to.
	for _, s := range []string{"e", "0u", "zz", "1", "1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8"} {
		if _, err := Decode(s); err == nil {
			t.Errorf("Decode(%q) succeeded, want error", s)
		}
	}
}

func TestValidHash(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"npp6cg2pc803y1wjir09w53gzksfrjxq", true},
		{"npp6cg2pc803y1wjir09w53gzksfrjx", false},
		{"npp6cg2pc803y1wjir09w53gzksfrjxe", false},
		{"../../../../../../etc/passwd0000", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := ValidHash(tt.in); got != tt.want {
			t.Errorf("ValidHash(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}
