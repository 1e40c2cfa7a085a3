package narinfo

import (
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/signing"
)

const sample = `StorePath: /nix/store/npp6cg2pc803y1wjir09w53gzksfrjxq-hello-cf
URL: nar/1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h.nar?hash=npp6cg2pc803y1wjir09w53gzksfrjxq
Compression: none
FileHash: sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h
FileSize: 120
NarHash: sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h
NarSize: 120
References: 0000000000000000000000000000000a-b npp6cg2pc803y1wjir09w53gzksfrjxq-hello-cf
Deriver: y6g3xzs7g0pbnxn5z180zq8c8dzfk5z4-hello-cf.drv
Sig: test:abc
CA: fixed:r:sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h
`

func TestRoundTrip(t *testing.T) {
	n, err := Parse(sample)
	if err != nil {
		t.Fatal(err)
	}
	if got := n.String(); got != sample {
		t.Errorf("round trip differs:\n%s\nwant:\n%s", got, sample)
	}
	if n.Deriver != "/nix/store/y6g3xzs7g0pbnxn5z180zq8c8dzfk5z4-hello-cf.drv" {
		t.Errorf("Deriver = %q", n.Deriver)
	}
}

func TestEmptyReferencesAlwaysWritten(t *testing.T) {
	n := &NarInfo{StorePath: "/nix/store/a-b", URL: "nar/x.nar", Compression: "none", NarHash: "sha256:x", NarSize: 1}
	want := "StorePath: /nix/store/a-b\nURL: nar/x.nar\nCompression: none\nNarHash: sha256:x\nNarSize: 1\nReferences: \n"
	if got := n.String(); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestFingerprint(t *testing.T) {
	n := &NarInfo{
		StorePath:  "/nix/store/zzz-x",
		NarHash:    "sha256:abc",
		NarSize:    42,
		References: []string{"/nix/store/bbb-y", "/nix/store/aaa-z"},
	}
	want := "1;/nix/store/zzz-x;sha256:abc;42;/nix/store/aaa-z,/nix/store/bbb-y"
	if got := n.Fingerprint(); got != want {
		t.Errorf("Fingerprint() = %q, want %q", got, want)
	}
	if n.References[0] != "/nix/store/bbb-y" {
		t.Error("Fingerprint reordered the caller's references")
	}
}

func TestSignVerify(t *testing.T) {
	k1, _ := signing.Generate("one", nil)
	k2, _ := signing.Generate("two", nil)
	n, _ := Parse(sample)
	n.Sigs = nil
	n.Sign(k1, k2)
	if len(n.Sigs) != 2 {
		t.Fatalf("got %d signatures, want 2", len(n.Sigs))
	}
	if !n.Verify(k1.Public()) || !n.Verify(k2.Public()) {
		t.Error("a key's signature does not verify")
	}
	n.NarSize++
	if n.Verify(k1.Public()) {
		t.Error("signature verifies after the NarSize changed")
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{"", "garbage", "StorePath: /nix/store/a\nNarSize: x\n"} {
		if _, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) succeeded", in)
		}
	}
}
