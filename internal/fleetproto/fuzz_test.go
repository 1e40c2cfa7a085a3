package fleetproto

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/nixbase32"
)

const fuzzStore = "/nix/store"

// FuzzDecodeHeartbeat: a heartbeat DecodeHeartbeat accepts has a valid host
// name, a current system that is a top-level store path (or none) and a
// bounded nonce, and encodes to JSON that decodes to the same heartbeat.
func FuzzDecodeHeartbeat(f *testing.F) {
	for _, s := range []string{
		`{"host":"chesty","current":"/nix/store/npp6cg2pc803y1wjir09w53gzksfrjxq-nixos-system-chesty-24.05","fingerprint":"abc","timestamp":"2026-01-02T03:04:05.123Z","nonce":"bm9uY2U"}`,
		`{"host":"chesty","current":"","facts":{"cpu":{"cores":8,"model":"x"},"mem":1.5e10,"tags":["a",null,true]},"timestamp":"2026-01-02T03:04:05+02:00","nonce":"n","agent":"1.0","dry_run":true,
		  "deployment":{"target":"/nix/store/npp6cg2pc803y1wjir09w53gzksfrjxq-x","previous":"","status":"rolled-back","error":"boom","started_at":"2026-01-02T03:00:00Z","duration_ms":1234}}`,
		`{"host":"-bad","nonce":"n","timestamp":"2026-01-02T03:04:05Z"}`,
		`{"host":"a","current":"/nix/store/../etc/passwd","nonce":"n"}`,
		`{"host":"a","current":"/nix/store/npp6cg2pc803y1wjir09w53gzksfrjxq-.hidden","nonce":"n"}`,
		`{"host":"a","current":"/nix/store/npp6cg2pc803y1wjir09w53gzksfrjxq-x/bin/sh","nonce":"n"}`,
		`{"host":"a","nonce":"` + strings.Repeat("n", 129) + `"}`,
		`{"HOST":"a","Nonce":"n","host":"b"}`,
		`{"host":"a","nonce":"n","timestamp":"not a time"}`,
		`{"host":"a","nonce":"\udc00\xff"}`,
		`[]`, `null`, ``, `{"host":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		hb, err := DecodeHeartbeat(body, fuzzStore)
		if err != nil {
			return
		}
		if !ValidHostName(hb.Host) || len(hb.Host) > 63 {
			t.Fatalf("accepted host %q", hb.Host)
		}
		if hb.Nonce == "" || len(hb.Nonce) > MaxNonce {
			t.Fatalf("accepted nonce of %d bytes", len(hb.Nonce))
		}
		if hb.Current != "" {
			base, ok := strings.CutPrefix(hb.Current, fuzzStore+"/")
			if !ok || strings.ContainsAny(base, "/\x00") || base[0] == '.' || len(base) < 34 {
				t.Fatalf("accepted current system %q", hb.Current)
			}
			if h, err := nixbase32.Decode(base[:32]); err != nil || len(h) != 20 {
				t.Fatalf("current system %q has hash part that does not decode: %v", hb.Current, err)
			}
		}
		out, err := json.Marshal(hb)
		if err != nil {
			t.Fatalf("accepted heartbeat does not encode: %v", err)
		}
		again, err := DecodeHeartbeat(out, fuzzStore)
		if err != nil {
			t.Fatalf("re-encoded heartbeat %s rejected: %v", out, err)
		}
		if out2, _ := json.Marshal(again); !bytes.Equal(out, out2) {
			t.Fatalf("round trip changed the heartbeat:\n%s\n%s", out, out2)
		}
	})
}
