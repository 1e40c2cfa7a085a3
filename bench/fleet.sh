#!/usr/bin/env bash
# Fleet load test: N simulated agents (10,000 by default) send signed
# heartbeats over loopback to one `crystal-forge server` with the default
# SQLite store or PostgreSQL; reports heartbeats/s, latency percentiles, errors, the
# database size and the server's CPU and RSS. The load generator and the
# server share this machine's cores.
#
#   bench/fleet.sh                        # 10,000 hosts, 30 s, 64 in flight
#   HOSTS=1000 DURATION=10s CONCURRENCY=128 bench/fleet.sh
#   RATE=200 bench/fleet.sh               # paced instead of as fast as possible
#   KEEPALIVE=false bench/fleet.sh        # a new TCP connection per heartbeat
#   bench/fleet.sh --db postgres          # state in PostgreSQL (a private server this
#                                         # script starts) instead of SQLite; or DB=postgres
# Needs curl and python3 (free ports); sqlite3, if present, cross-checks
# that every accepted heartbeat was recorded (psql does for PostgreSQL, which
# needs postgresql-15: scripts/install-deps.sh). Results: bench/results/fleet.*
# (fleet-postgres.* with DB=postgres).
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
DB=${DB:-sqlite}
if [ "${1:-}" = --db ]; then DB=${2:?--db needs sqlite or postgres}; fi
case "$DB" in
sqlite) NAME=fleet ;;
postgres) NAME=fleet-postgres ;;
*) echo "DB must be sqlite or postgres, not $DB" >&2; exit 2 ;;
esac
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
PGPID=
# shellcheck source=bench/postgres.sh
. bench/postgres.sh
cleanup() {
	if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
		kill "$PID" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$PID" 2>/dev/null || true
	fi
	stop_postgres
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

DBARGS=()
if [ "$DB" = postgres ]; then
	start_postgres "$PWD/$OUT/$NAME-postgres.log" forge
	DSN=$(postgres_dsn forge)
	DBARGS=(--db "$DSN")
fi

START=$EPOCHREALTIME
"$BIN" server --config "$WORK/forge.toml" --data-dir "$WORK/data" --key-file "$WORK/data/cache-key" "${DBARGS[@]}" \
	>"$OUT/$NAME-server.log" 2>&1 &
PID=$!
up=
for _ in $(seq 600); do # 60 s: the 10,000 hosts are upserted before the API listens
	if curl -fs --max-time 1 "http://127.0.0.1:$API/health" >/dev/null; then up=1; break; fi
	kill -0 "$PID" 2>/dev/null || break
	sleep 0.1
done
if [ -z "$up" ]; then
	echo "server did not come up; its log:" >&2
	tail -20 "$OUT/$NAME-server.log" >&2
	exit 1
fi
printf 'server up in %.1fs (pid %d, %d hosts registered from the config)\n' "$(awk -v a="$START" -v b="$EPOCHREALTIME" 'BEGIN{print b-a}')" "$PID" "$HOSTS"
grep VmRSS "/proc/$PID/status" | sed 's/^/idle server /'

sharing="the server and the load generator"
[ "$DB" = sqlite ] || sharing="the server, the load generator and PostgreSQL (counted as other processes)"
echo "== load on $DB: $(nproc) cores shared by $sharing"
SQLITE="$WORK/data/crystal-forge.db"
LOADDB=()
[ "$DB" = postgres ] || LOADDB=(--db "$SQLITE")
timeout --kill-after=10s "$LOAD_TIMEOUT" "$WORK/fleetload" --server "http://127.0.0.1:$API" --keys-dir "$KEYS" --hosts "$HOSTS" \
	--duration "$DURATION" --concurrency "$CONCURRENCY" --rate "$RATE" --keepalive="$KEEPALIVE" \
	"${LOADDB[@]}" --server-pid "$PID" --json "$OUT/$NAME.json" | tee "$OUT/$NAME.txt"
if [ "$DB" = postgres ]; then
	# PostgreSQL's own CPU time during the whole run: the postmaster and its
	# children (each in a session of its own: PostgreSQL calls setsid).
	pgcpu=0
	pm=$(head -1 "$PGHOST_DIR/data/postmaster.pid")
	for p in $pm $(pgrep -P "$pm" || true); do
		read -r -a S <<<"$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null)" || continue
		pgcpu=$((pgcpu + S[11] + S[12] + S[13] + S[14]))
	done
	echo "postgres CPU since start (postmaster, its processes and reaped ones): $((pgcpu / 100)) s" | tee -a "$OUT/$NAME.txt"
fi

echo "== server after the run"
grep -E 'VmRSS|VmHWM|Threads' "/proc/$PID/status" | tee -a "$OUT/$NAME.txt"
read -r -a STAT <<<"$(sed 's/^.*) //' "/proc/$PID/stat")" # fields from state (3) on
echo "server CPU since start: $((STAT[11] / 100)) s user, $((STAT[12] / 100)) s system" | tee -a "$OUT/$NAME.txt"
kill "$PID"
for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
PID=
# Every accepted heartbeat is counted in a compacted heartbeats row.
if [ "$DB" = postgres ]; then
	"$PGBIN/psql" -h "$PGHOST_DIR" -U postgres -d forge -Atc \
		"SELECT count(*) || ' heartbeat rows, ' || sum(count) || ' heartbeats recorded; database ' || pg_size_pretty(pg_database_size('forge')) FROM heartbeats" |
		tee -a "$OUT/$NAME.txt"
elif command -v sqlite3 >/dev/null; then
	sqlite3 "$SQLITE" 'SELECT count(*) || " heartbeat rows, " || sum(count) || " heartbeats recorded" FROM heartbeats' | tee -a "$OUT/$NAME.txt"
	ls -l "$SQLITE"* | awk '{print $5, $9}' | sed "s#$WORK/data/##" | tee -a "$OUT/$NAME.txt"
fi
warn=$(grep -c '"level":"WARN"\|level=WARN' "$OUT/$NAME-server.log" || true)
err=$(grep -c '"level":"ERROR"\|level=ERROR' "$OUT/$NAME-server.log" || true)
echo "server log: $warn warnings, $err errors ($OUT/$NAME-server.log)" | tee -a "$OUT/$NAME.txt"
