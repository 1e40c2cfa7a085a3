package nixcli

import (
	"slices"
	"testing"
)

// The inputs are stderr as Nix 2.8 wrote it for `nix build -L --keep-going`
// and `nix flake show` of failing fixture flakes.
func TestErrorMessage(t *testing.T) {
	const (
		bad = "/nix/store/k0kg6rj3cav61vyd5l2jn3naifdx9d7k-bad.drv"
		dep = "/nix/store/0ga3a8c4dc0mrk8fbckkw773k9px2gv2-dep0.drv"
		top = "/nix/store/pp29b0ncj5s3dw3j0c017j9vcyvd2h37-top.drv"
	)
	tests := []struct {
		name, stderr, message, top string
		builders                   []string
	}{
		{
			name: "builder failed",
			stderr: "warning: Git tree '/tmp/hx' is dirty\nbuilding '" + bad + "'...\nbad> fails on purpose\n" +
				"error: builder for '" + bad + "' failed with exit code 1\n",
			message:  "error: builder for '" + bad + "' failed with exit code 1",
			top:      bad,
			builders: []string{bad},
		},
		{
			name: "dependency failed",
			stderr: "building '" + dep + "'...\ndep0> dep fails\n" +
				"error: builder for '" + dep + "' failed with exit code 1\n" +
				"error: 1 dependencies of derivation '" + top + "' failed to build\n",
			message:  "error: builder for '" + dep + "' failed with exit code 1\nerror: 1 dependencies of derivation '" + top + "' failed to build",
			top:      top,
			builders: []string{dep},
		},
		{
			name: "evaluation error in colour",
			stderr: "warning: Git tree '/tmp/hx' is dirty\n\x1b[31;1merror:\x1b[0m undefined variable 'undefinedVar'\n\n" +
				"       at /nix/store/9jsr-source/flake.nix:3:53:\n\n" +
				"            3|     packages.x86_64-linux.bad = mk \"bad\" \"echo x\" + undefinedVar;\n" +
				"             |                                                     ^\n",
			message: "error: undefined variable 'undefinedVar'\n\n       at /nix/store/9jsr-source/flake.nix:3:53:\n\n" +
				"            3|     packages.x86_64-linux.bad = mk \"bad\" \"echo x\" + undefinedVar;\n" +
				"             |                                                     ^",
		},
		{
			name:   "no error line",
			stderr: "Killed\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := ErrorMessage(tt.stderr)
			if msg != tt.message {
				t.Errorf("ErrorMessage = %q, want %q", msg, tt.message)
			}
			top, builders := FailedDerivations(msg)
			if top != tt.top || !slices.Equal(builders, tt.builders) {
				t.Errorf("FailedDerivations = %q, %q; want %q, %q", top, builders, tt.top, tt.builders)
			}
		})
	}
}

func TestErrorText(t *testing.T) {
	e := &Error{Command: "nix flake show", Message: "error: undefined variable 'x'"}
	if got := e.Error(); got != "nix flake show: error: undefined variable 'x'" {
		t.Errorf("Error() = %q", got)
	}
}
