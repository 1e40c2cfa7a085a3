#!/usr/bin/env bash
# API benchmark: requests/s and p99 of /build/status and /health under wrk,
# and the time from a trigger to the first build log line. One run, one
# machine; compare with the spec's promise (100 req/s, < 50 ms status).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/crystal-forge}
OUT=bench/results
mkdir -p "$OUT"
WORK=$(mktemp -d)
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters =\nsandbox = false'
DURATION=${DURATION:-10s}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
API=$(free_port); CACHE=$(free_port)
cat > "$WORK/forge.toml" <<TOML
bind = "127.0.0.1"
api_port = $API
cache_port = $CACHE
poll_interval = "0"
TOML

"$BIN" server --config "$WORK/forge.toml" --demo --data-dir "$WORK/data" --key-file "$WORK/data/cache-key" \
	>"$OUT/api-server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$API/health" >/dev/null && break; sleep 0.1; done

URL=http://127.0.0.1:$API
# One build first, so /build/status answers from a real history.
"$BIN" trigger --server "$URL" -f demo >/dev/null

run_wrk() { # name path
	wrk -t2 -c64 -d"$DURATION" --latency "$URL$2" > "$OUT/api-$1.txt"
	local rps p99
	rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/api-$1.txt")
	p99=$(awk '$1=="99%" {print $2}' "$OUT/api-$1.txt")
	printf '%-22s %12s req/s   p99 %s\n' "$2" "$rps" "$p99"
}
echo "== API under wrk (2 threads, 64 connections, $DURATION)"
run_wrk status /build/status/demo
run_wrk health /health
run_wrk info /info

echo "== trigger -> first log line"
go run ./bench/firstlog -server "$URL" -repo demo -n "${BUILDS:-10}" | tee "$OUT/api-firstlog.txt"
