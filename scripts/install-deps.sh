#!/usr/bin/env bash
# Installs the programs the tests and benchmarks drive for real: Nix (the
# client and builder), git, xz, Chromium, PostgreSQL, the Versity S3 Gateway (an S3
# server) and tailscaled with its CLI (both built from the Go module proxy
# into $(go env GOPATH)/bin); for
# benchmarks wrk, nginx, hyperfine. Only what is
# missing is installed; apt-get runs only when something is. Then makes Nix
# usable (scripts/setup-nix.sh).
set -euo pipefail

want=()
need() { command -v "$1" >/dev/null 2>&1 || want+=("$2"); }

need nix-store nix-bin
need git git
need xz xz-utils
need sqlite3 sqlite3
need curl curl
need chromium chromium
# PostgreSQL's programs are not on PATH on Debian: the tests look in
# /usr/lib/postgresql/<version>/bin (15 on bookworm).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
	want+=(postgresql-15)
fi
if [ "${1:-}" = bench ]; then
	need wrk wrk
	need nginx nginx-light
	need hyperfine hyperfine
fi

if [ ${#want[@]} -gt 0 ]; then
	echo "install-deps: installing ${want[*]}"
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	export DEBIAN_FRONTEND=noninteractive
	$sudo apt-get update -qq
	# Releases after bookworm ship another major version of PostgreSQL.
	if [[ " ${want[*]} " == *" postgresql-15 "* ]] && ! apt-cache show postgresql-15 >/dev/null 2>&1; then
		want=("${want[@]/postgresql-15/postgresql}")
	fi
	$sudo apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
fi

# The S3 server the storage tests run against. `go install` builds it from
# the module proxy; the tests look for it on PATH and in GOBIN/GOPATH/bin.
versitygw_version=v1.8.0
gobin=$(GOTOOLCHAIN=local go env GOBIN)
[ -n "$gobin" ] || gobin="$(GOTOOLCHAIN=local go env GOPATH)/bin"
if ! command -v versitygw >/dev/null 2>&1 && [ ! -x "$gobin/versitygw" ]; then
	echo "install-deps: installing versitygw $versitygw_version into $gobin"
	GOTOOLCHAIN=local GOBIN="$gobin" go install "github.com/versity/versitygw/cmd/versitygw@$versitygw_version"
fi

# A real tailscaled and its CLI, for the test of use_tailscaled
# (TestTailscaled): go.mod's version of tailscale.com, from the module proxy.
tailscale_version=$(cd "$(dirname "$0")/.." && GOTOOLCHAIN=local go list -m -f '{{.Version}}' tailscale.com)
if [ ! -x "$gobin/tailscaled" ] || [ ! -x "$gobin/tailscale" ]; then
	echo "install-deps: installing tailscaled and tailscale $tailscale_version into $gobin"
	GOTOOLCHAIN=local GOBIN="$gobin" go install "tailscale.com/cmd/tailscaled@$tailscale_version" "tailscale.com/cmd/tailscale@$tailscale_version"
fi

# Debian's nix-bin leaves no build users and no Nix database: set them up.
"$(dirname "$0")/setup-nix.sh"
