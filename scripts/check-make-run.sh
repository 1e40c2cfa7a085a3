#!/usr/bin/env bash
# Checks the README's `make run` as a new user meets it: it starts, and its
# demo build has built every package for real within 60 s of the command,
# with nothing in the log about the network.
#
# Runs `make run` with its state in a new directory, polls the API until the
# demo's first build ends, then checks that it ended `success`, that every
# per-package result succeeded with output paths that exist, and that the
# server's output holds no download or retry noise. Exit 0 only then.
set -euo pipefail
cd "$(dirname "$0")/.."

limit=${MAKE_RUN_LIMIT:-60}
api=http://127.0.0.1:8000
data=$(mktemp -d /tmp/crystal-forge-make-run.XXXXXX)
out="$data.log"
fail() {
	echo "check-make-run: $*" >&2
	echo "--- make run output:" >&2
	tail -50 "$out" >&2 || true
	exit 1
}

# Build first so that the clock measures the server, not the compiler.
make -s build deps >/dev/null
start=$(date +%s)
setsid make run DATA="$data" >"$out" 2>&1 &
pid=$!
stop() {
	kill -TERM -- "-$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	chmod -R u+w "$data" 2>/dev/null || true
	rm -rf "$data" "$out"
}
trap stop EXIT

status=""
while :; do
	elapsed=$(($(date +%s) - start))
	kill -0 "$pid" 2>/dev/null || fail "make run exited after ${elapsed} s"
	body=$(curl -fsS "$api/api/v1/repositories/demo" 2>/dev/null || true)
	status=$(printf '%s' "$body" | python3 -c 'import json,sys
try: print((json.load(sys.stdin).get("latest_build") or {}).get("status", ""))
except Exception: print("")')
	case $status in success | failed | cancelled) break ;; esac
	[ "$elapsed" -lt "$limit" ] || fail "the demo build had not finished after ${limit} s (status '${status}')"
	sleep 0.5
done
elapsed=$(($(date +%s) - start))
[ "$status" = success ] || fail "the demo build ended '$status'"

id=$(curl -fsS "$api/api/v1/repositories/demo" | python3 -c 'import json,sys; print(json.load(sys.stdin)["latest_build"]["id"])')
curl -fsS "$api/api/v1/builds/$id" | python3 -c '
import json, os, sys
b = json.load(sys.stdin)
rs = b.get("results") or []
if not rs:
    sys.exit("check-make-run: the demo build recorded no results")
for r in rs:
    if r["status"] != "success":
        sys.exit("check-make-run: %s ended %s" % (r["attr"], r["status"]))
    # The flake check builds nothing of its own; every other attribute must
    # have built something that exists.
    if r["kind"] != "check" and not r.get("out_paths"):
        sys.exit("check-make-run: %s has no output path" % r["attr"])
    for p in r["out_paths"]:
        if not os.path.exists(p):
            sys.exit("check-make-run: %s: output %s does not exist" % (r["attr"], p))
print("check-make-run: %d attributes succeeded: %s" % (len(rs), ", ".join(r["attr"] for r in rs)))
' || fail "the demo build's results are not all good"

log=$(curl -fsS "$api/api/v1/builds/$id/log")
if printf '%s\n%s\n' "$log" "$(cat "$out")" | grep -Ei 'unable to download|retrying|cache\.nixos\.org|could not resolve|network is unreachable|timed out' >&2; then
	fail "network noise in the demo's log (above)"
fi
echo "check-make-run: the demo build succeeded ${elapsed} s after make run started"
