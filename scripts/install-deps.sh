#!/usr/bin/env bash
# Installs the programs the tests and benchmarks drive for real: Nix (the
# client and builder), git, xz, Chromium; for benchmarks wrk, nginx, hyperfine. Only what is
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
	$sudo apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
fi

# Debian's nix-bin leaves no build users and no Nix database: set them up.
"$(dirname "$0")/setup-nix.sh"
