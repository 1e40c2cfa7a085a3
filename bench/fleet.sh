#!/usr/bin/env bash
# Fleet load test: N simulated agents (10,000 by default) send signed
# heartbeats over loopback to one `crystal-forge server` with the default
# SQLite store; reports heartbeats/s, latency percentiles, errors, the
# database size and the server's CPU and RSS. The load generator and the
# server share this machine's cores.
#
#   bench/fleet.sh                        # 10,000 hosts, 30 s, 64 in flight
#   HOSTS=1000 DURATION=10s CONCURRENCY=128 bench/fleet.sh
#   RATE=200 bench/fleet.sh               # paced instead of as fast as possible
#   KEEPALIVE=false bench/fleet.sh        # a new TCP connection per heartbeat
# Needs curl and python3 (free ports); sqlite3, if present, cross-checks
# that every accepted heartbeat was recorded. Results: bench/results/fleet.*
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=local
BIN=${BIN:-bin/crystal-forge}
OUT=bench/results
mkdir -p "$OUT"
HOSTS=${HOSTS:-10000}
DURATION=${DURATION:-30s}
CONCURRENCY=${CONCURRENCY:-64}
RATE=${RATE:-0}
KEEPALIVE=${KEEPALIVE:-true}
LOAD_TIMEOUT=${LOAD_TIMEOUT:-600s} # hard bound on the load generator (warm-up + DURATION)
# Agent keys are cached across runs (generating 10,000 takes a moment).
KEYS=${KEYS:-$OUT/fleet-keys}

[ -n "${SKIP_BUILD:-}" ] || make build >/dev/null
WORK=$(mktemp -d)
go build -o "$WORK/fleetload" ./bench/fleetload

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
API=$(free_port); CACHE=$(free_port)
cat > "$WORK/forge.toml" <<TOML
bind = "127.0.0.1"
api_port = $API
cache_port = $CACHE
poll_interval = "0"
fleet_enrolment = "closed"
TOML
echo "== $HOSTS agent keys and [[hosts]] (cached in $KEYS)"
"$WORK/fleetload" --keys-dir "$KEYS" --hosts "$HOSTS" --print-hosts >> "$WORK/forge.toml"

PID=
cleanup() {
	if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
		kill "$PID" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$PID" 2>/dev/null || true
	fi
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

START=$EPOCHREALTIME
"$BIN" server --config "$WORK/forge.toml" --data-dir "$WORK/data" --key-file "$WORK/data/cache-key" \
	>"$OUT/fleet-server.log" 2>&1 &
PID=$!
up=
for _ in $(seq 600); do # 60 s: the 10,000 hosts are upserted before the API listens
	if curl -fs --max-time 1 "http://127.0.0.1:$API/health" >/dev/null; then up=1; break; fi
	kill -0 "$PID" 2>/dev/null || break
	sleep 0.1
done
if [ -z "$up" ]; then
	echo "server did not come up; its log:" >&2
	tail -20 "$OUT/fleet-server.log" >&2
	exit 1
fi
printf 'server up in %.1fs (pid %d, %d hosts registered from the config)\n' "$(awk -v a="$START" -v b="$EPOCHREALTIME" 'BEGIN{print b-a}')" "$PID" "$HOSTS"
grep VmRSS "/proc/$PID/status" | sed 's/^/idle server /'

echo "== load: $(nproc) cores shared by the server and the load generator"
DB="$WORK/data/crystal-forge.db"
timeout --kill-after=10s "$LOAD_TIMEOUT" "$WORK/fleetload" --server "http://127.0.0.1:$API" --keys-dir "$KEYS" --hosts "$HOSTS" \
	--duration "$DURATION" --concurrency "$CONCURRENCY" --rate "$RATE" --keepalive="$KEEPALIVE" \
	--db "$DB" --server-pid "$PID" --json "$OUT/fleet.json" | tee "$OUT/fleet.txt"

echo "== server after the run"
grep -E 'VmRSS|VmHWM|Threads' "/proc/$PID/status" | tee -a "$OUT/fleet.txt"
read -r -a STAT <<<"$(sed 's/^.*) //' "/proc/$PID/stat")" # fields from state (3) on
echo "server CPU since start: $((STAT[11] / 100)) s user, $((STAT[12] / 100)) s system" | tee -a "$OUT/fleet.txt"
kill "$PID"
for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
PID=
if command -v sqlite3 >/dev/null; then
	# Every accepted heartbeat is counted in a compacted heartbeats row.
	sqlite3 "$DB" 'SELECT count(*) || " heartbeat rows, " || sum(count) || " heartbeats recorded" FROM heartbeats' | tee -a "$OUT/fleet.txt"
	ls -l "$DB"* | awk '{print $5, $9}' | sed "s#$WORK/data/##" | tee -a "$OUT/fleet.txt"
fi
warn=$(grep -c '"level":"WARN"\|level=WARN' "$OUT/fleet-server.log" || true)
err=$(grep -c '"level":"ERROR"\|level=ERROR' "$OUT/fleet-server.log" || true)
echo "server log: $warn warnings, $err errors ($OUT/fleet-server.log)" | tee -a "$OUT/fleet.txt"
