// Package nixbase32 implements Nix's base-32 encoding, used for store path
// hashes and for hashes in narinfo files.
package nixbase32

import "fmt"

// Alphabet omits e, o, u and t, as Nix's does.
const Alphabet = "0123456789abcdfghijklmnpqrsvwxyz"

// EncodedLen is the length of the encoding of n bytes.
func EncodedLen(n int) int {
	if n == 0 {
		return 0
	}
	return (n*8-1)/5 + 1
}

// DecodedLen is the number of bytes that n encoded characters hold.
func DecodedLen(n int) int { return n * 5 / 8 }

// Encode returns the Nix base-32 encoding of src. Nix emits the most
// significant 5-bit group first, reading the bytes from the end.
func Encode(src []byte) string {
	n := EncodedLen(len(src))
	out := make([]byte, n)
	for i := n - 1; i >= 0; i-- {
		b := uint(i * 5)
		j, k := b/8, b%8
		c := uint(src[j]) >> k
		if j+1 < uint(len(src)) {
			c |= uint(src[j+1]) << (8 - k)
		}
		out[n-1-i] = Alphabet[c&0x1f]
	}
	return string(out)
}

var decodeMap = func() (m [256]int8) {
	for i := range m {
		m[i] = -1
	}
	for i := 0; i < len(Alphabet); i++ {
		m[Alphabet[i]] = int8(i)
	}
	return m
}()

// Decode parses a Nix base-32 string.
func Decode(s string) ([]byte, error) {
	// Only lengths that some byte count encodes to are valid; others
	// would index past the end below.
	if EncodedLen(DecodedLen(len(s))) != len(s) {
		return nil, fmt.Errorf("nixbase32: invalid length %d", len(s))
	}
	dst := make([]byte, DecodedLen(len(s)))
	n := len(s)
	for i := 0; i < n; i++ {
		c := s[n-1-i]
		d := decodeMap[c]
		if d < 0 {
			return nil, fmt.Errorf("nixbase32: invalid character %q", c)
		}
		b := uint(i * 5)
		j, k := b/8, b%8
		dst[j] |= byte(d) << k
		if j+1 < uint(len(dst)) {
			dst[j+1] |= byte(d) >> (8 - k)
		} else if byte(d)>>(8-k) != 0 {
			return nil, fmt.Errorf("nixbase32: invalid string %q", s)
		}
	}
	return dst, nil
}

// ValidHash reports whether s is a store path hash: 32 characters of the alphabet.
func ValidHash(s string) bool {
	if len(s) != 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if decodeMap[s[i]] < 0 {
			return false
		}
	}
	return true
}
