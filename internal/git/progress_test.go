package git

import (
	"bytes"
	"testing"
)

func TestProgressWriter(t *testing.T) {
	for _, tt := range []struct {
		name   string
		writes []string
		want   string
	}{
		{"lines pass", []string{"a\nb\n"}, "a\nb\n"},
		{"progress dropped", []string{"Receiving 1%\rReceiving 50%\rReceiving 100%, done.\n"}, "Receiving 100%, done.\n"},
		{"split across writes", []string{"Clon", "ing\nRec 1%\r", "Rec 2%\rdone\n"}, "Cloning\ndone\n"},
		{"last line without newline", []string{"fatal: x"}, "fatal: x\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			active := make(chan struct{}, 1)
			p := &progressWriter{w: &out, active: active}
			for _, w := range tt.writes {
				if n, err := p.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			if err := p.flush(); err != nil {
				t.Fatal(err)
			}
			if out.String() != tt.want {
				t.Errorf("log = %q, want %q", out.String(), tt.want)
			}
			select {
			case <-active:
			default:
				t.Error("writes did not signal activity")
			}
		})
	}
}
