#!/usr/bin/env bash
# Builder scaling: the makespan of a flake of 12 packages that each sleep
# 2 s, built by 1, 2 and 3 `crystal-forge builder` processes (--jobs 1
# each) for a server started with --no-local-builder, on this machine's
# Nix store and the server's SQLite file; then the queue's claim latency
# (bench/claimload). Reports the whole build (evaluation included) and the
# attribute span (first attribute started to last ended), with the speed-up
# over one builder. Needs nix, git, curl and python3.
#
#   bench/jobs.sh
#   ATTRS=12 SLEEP=2 WORKERS="1 2 3" bench/jobs.sh
#   DB=postgres bench/jobs.sh   # the state in a private PostgreSQL this script
#                               # starts (postgresql-15: scripts/install-deps.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=local
BIN=${BIN:-bin/crystal-forge}
OUT=bench/results
mkdir -p "$OUT"
DB=${DB:-sqlite}
case $DB in sqlite | postgres) ;; *) echo "DB must be sqlite or postgres, not $DB" >&2; exit 2 ;; esac
ATTRS=${ATTRS:-12}
SLEEP=${SLEEP:-2}
WORKERS=${WORKERS:-1 2 3}
[ -n "${SKIP_BUILD:-}" ] || make build >/dev/null
WORK=$(mktemp -d)
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters =\nsandbox = false'
export XDG_CACHE_HOME=$WORK/xdg

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
API=$(free_port); CACHE=$(free_port)
SYSTEM=$(nix eval --impure --raw --expr builtins.currentSystem)

# The fixture flake: ATTRS packages sleeping SLEEP s; NONCE makes each round new.
REPO=$WORK/repo
git init -q -b main "$REPO"
write_flake() {
	{
		echo '{ outputs = { self }: let system = "'"$SYSTEM"'"; nonce = "'"$1"'";'
		echo '  mk = name: derivation { inherit name system nonce; builder = "/bin/sh"; args = [ "-c" "sleep '"$SLEEP"'; echo $name $nonce > $out" ]; PATH = "/usr/bin:/bin"; };'
		echo '  in { packages.${system} = {'
		for i in $(seq "$ATTRS"); do echo "    p$i = mk \"p$i\";"; done
		echo '  }; }; }'
	} > "$REPO/flake.nix"
	git -C "$REPO" add flake.nix
	git -C "$REPO" -c user.name=bench -c user.email=bench@localhost commit -q -m "round $1"
}
write_flake init

cat > "$WORK/forge.toml" <<TOML
bind = "127.0.0.1"
api_port = $API
cache_port = $CACHE
poll_interval = "0"
max_parallel_builds = 1

[[repositories]]
name = "bench"
url = "$REPO"
branch = "main"
TOML

PIDS=()
PGPID=
# shellcheck source=bench/postgres.sh
. bench/postgres.sh
cleanup() {
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	stop_postgres
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

DSN=$WORK/data/crystal-forge.db
SERVERDB=()
if [ "$DB" = postgres ]; then
	start_postgres "$PWD/$OUT/jobs-postgres.log" forge claims
	DSN=$(postgres_dsn forge)
	SERVERDB=(--db "$DSN")
fi

"$BIN" server --config "$WORK/forge.toml" --data-dir "$WORK/data" --key-file "$WORK/data/cache-key" --no-local-builder "${SERVERDB[@]}" \
	>"$OUT/jobs-server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do curl -fs "http://127.0.0.1:$API/health" >/dev/null && break; sleep 0.1; done

REPORT=$OUT/jobs-$DB.txt
echo "database: $DB" > "$REPORT"
base_total= ; base_span=
for n in $WORKERS; do
	write_flake "$(date +%s%N)"
	BPIDS=()
	for i in $(seq "$n"); do
		"$BIN" builder --db "$DSN" --name "b$i" --jobs 1 --data-dir "$WORK/builder-$n-$i" \
			>>"$OUT/jobs-builders.log" 2>&1 &
		BPIDS+=($!); PIDS+=($!)
	done
	id=$(curl -fs -X POST "http://127.0.0.1:$API/build/trigger/bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["build_id"])')
	while :; do
		st=$(curl -fs "http://127.0.0.1:$API/api/v1/builds/$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
		case $st in queued|running) sleep 0.2 ;; *) break ;; esac
	done
	line=$(curl -fs "http://127.0.0.1:$API/api/v1/builds/$id" | N=$n BT="$base_total" BS="$base_span" python3 -c '
import json, os, sys
from datetime import datetime
t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
b = json.load(sys.stdin)
n = int(os.environ["N"])
pk = [r for r in b["results"] if r["kind"] == "package"]
total = t(b["finished_at"]) - t(b["started_at"])
span = max(t(r["finished_at"]) for r in pk) - min(t(r["started_at"]) for r in pk)
bt, bs = os.environ["BT"], os.environ["BS"]
sp = "" if not bt else " speed-up total %.2fx, attributes %.2fx (%.2f and %.2f of linear)" % (float(bt)/total, float(bs)/span, float(bt)/total/n, float(bs)/span/n)
print("%s %d builders: %s, %d attributes; build %.1f s, attribute span %.1f s%s|%.3f|%.3f" % (b["status"], n, b["short_commit"], len(pk), total, span, sp, total, span))')
	echo "${line%%|*}" | tee -a "$REPORT"
	rest=${line#*|}
	if [ -z "$base_total" ]; then base_total=${rest%%|*}; base_span=${rest#*|}; fi
	for p in "${BPIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${BPIDS[@]}"; do wait "$p" 2>/dev/null || true; done
done
CLAIMDB=()
[ "$DB" = sqlite ] || CLAIMDB=(--db "$(postgres_dsn claims)")
go run ./bench/claimload "${CLAIMDB[@]}" | tee -a "$REPORT"
