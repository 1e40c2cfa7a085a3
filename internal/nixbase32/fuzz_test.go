package nixbase32

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzDecode: whatever Decode accepts re-encodes to exactly the input (one
// encoding per value), and a valid store path hash always decodes.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		"", "0z", "00", "zz", "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
		"1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h",
		"npp6cg2pc803y1wjir09w53gzksfrjxq", "eeee", "0", "000", "ZZ", "0\x00",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := Decode(s)
		if ValidHash(s) && (err != nil || len(b) != 20) {
			t.Fatalf("ValidHash(%q) but Decode = %x, %v", s, b, err)
		}
		if err != nil {
			return
		}
		if len(b) != DecodedLen(len(s)) {
			t.Fatalf("Decode(%q) gave %d bytes, want %d", s, len(b), DecodedLen(len(s)))
		}
		if got := Encode(b); got != s {
			t.Fatalf("Encode(Decode(%q)) = %q", s, got)
		}
		for i := 0; i < len(s); i++ {
			if !strings.ContainsRune(Alphabet, rune(s[i])) {
				t.Fatalf("Decode accepted %q, outside the alphabet", s[i])
			}
		}
	})
}

// FuzzEncode: every byte string survives Encode then Decode.
func FuzzEncode(f *testing.F) {
	for _, b := range [][]byte{nil, {0}, {0xff}, {0x1f}, bytes.Repeat([]byte{0xff}, 20), bytes.Repeat([]byte{0xa5}, 32), bytes.Repeat([]byte{0x80}, 64)} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s := Encode(b)
		if len(s) != EncodedLen(len(b)) {
			t.Fatalf("Encode(%x) has length %d, want %d", b, len(s), EncodedLen(len(b)))
		}
		back, err := Decode(s)
		if err != nil || !bytes.Equal(back, b) {
			t.Fatalf("Decode(Encode(%x)) = %x, %v", b, back, err)
		}
		if ValidHash(s) != (len(b) == 20) {
			t.Fatalf("ValidHash(Encode(%d bytes)) = %v", len(b), ValidHash(s))
		}
	})
}
