#!/usr/bin/env bash
# Benchmarks Crystal Forge's binary cache against nginx serving a flat-file
# binary cache (`nix copy --to file://…?compression=none`), side by side in
# one run, on the same store paths, on 127.0.0.1 only. Run it as `make bench`.
#
#   1. narinfo requests/s and p99 latency: wrk -t2 -c64, random narinfos.
#      Also, as background, one-connection (wrk -t1 -c1) rates of narinfos
#      and of the small paths' NARs: the latency a sequential client sees.
#   2. one-connection NAR throughput of the large path: curl -o /dev/null.
#   3. wall time of a real `nix copy --from http://…` of the whole set into a
#      fresh store, with hyperfine.
#
# The paths come from bench/paths.nix (plain derivations, no nixpkgs): built
# once, then reused while they are in the store. Raw outputs go to
# bench/results/<timestamp>/ (bench/results/latest points at the newest); the
# summary table is printed last. Exit status is non-zero only on errors: a
# missed target is reported, not failed.
#
# Knobs (environment, defaults in brackets): BENCH_SMALL [1000] small paths,
# BENCH_LARGE_MIB [256], BENCH_WRK_SECONDS [12], BENCH_WRK_ROUNDS [3],
# BENCH_ONE_SECONDS [8], BENCH_NAR_RUNS [15], BENCH_NAR_ZSTD_RUNS [5],
# BENCH_COPY_ROUNDS [5] (of 2 runs per server), BENCH_DST_DIR: parent of the nix copy destination
# [/dev/shm when it has room, so client-side disk writes do not drown the
# servers' differences in noise], BENCH_WAIT_IDLE [120]: seconds to wait at
# most for a busy machine (>= 20% CPU) to calm down before starting.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export GOTOOLCHAIN=local
export LC_ALL=C

SMALL=${BENCH_SMALL:-1000}
LARGE_MIB=${BENCH_LARGE_MIB:-256}
WRK_SECONDS=${BENCH_WRK_SECONDS:-12}
WRK_ROUNDS=${BENCH_WRK_ROUNDS:-3}
WRK_WARMUP_SECONDS=3
ONE_SECONDS=${BENCH_ONE_SECONDS:-8}
NAR_RUNS=${BENCH_NAR_RUNS:-15}
NAR_ZSTD_RUNS=${BENCH_NAR_ZSTD_RUNS:-5}
COPY_ROUNDS=${BENCH_COPY_ROUNDS:-5}
WAIT_IDLE=${BENCH_WAIT_IDLE:-120}
BIN=$ROOT/bin/crystal-forge

# Nix must never wait on the network: no substituters, flakes CLI on; no
# sandbox, since the paths are built by the host's /bin/sh.
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters =\nsandbox = false'

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in nix nix-build wrk nginx hyperfine curl awk ss; do
	command -v "$tool" >/dev/null || die "$tool not found (run ./scripts/install-deps.sh bench)"
done
[ -x "$BIN" ] || die "$BIN missing: run make build (or make bench)"

STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS=$ROOT/bench/results/$STAMP
mkdir -p "$RESULTS"
ln -sfn "$STAMP" "$ROOT/bench/results/latest"

# --- scratch space and cleanup ----------------------------------------------

WORK=$(mktemp -d /tmp/cf-bench.XXXXXX)
chmod 755 "$WORK"
DSTPARENT=${BENCH_DST_DIR:-}
if [ -z "$DSTPARENT" ]; then
	DSTPARENT=$WORK
	if [ -d /dev/shm ] && [ -w /dev/shm ] &&
		[ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -gt $(((LARGE_MIB + 512) * 1024)) ]; then
		DSTPARENT=/dev/shm
	fi
fi
DSTDIR=$(mktemp -d "$DSTPARENT/cf-bench-dst.XXXXXX")
DST=$DSTDIR/store
# The client's narinfo disk cache lives here, not in ~/.cache: it is deleted
# before every nix copy run.
export XDG_CACHE_HOME=$WORK/xdg-cache

PIDS=()
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$WORK" "$DSTDIR"
	[ $rc -eq 0 ] || log "failed (exit $rc); raw outputs so far in $RESULTS"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers ----------------------------------------------------------------

# free_port prints a port nobody listens on (best effort; start-up checks it).
free_port() {
	local p
	for _ in $(seq 100); do
		p=$((20000 + RANDOM % 40000))
		if [ -z "$(ss -Htln "sport = :$p")" ]; then
			echo "$p"
			return
		fi
	done
	die "no free port"
}

# wait_up PID PORT: until the server answers nix-cache-info (10 s at most).
wait_up() {
	local pid=$1 port=$2
	for _ in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || return 1
		curl -sf -o /dev/null "http://127.0.0.1:$port/nix-cache-info" && return 0
		sleep 0.1
	done
	return 1
}

# cpu_ticks PID: user+system clock ticks of PID and its children (nginx's
# workers), so a difference over a run is the server's CPU time.
cpu_ticks() {
	local p t=0 s
	for p in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
		s=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
		t=$((t + $(awk '{print $12 + $13}' <<<"$s")))
	done
	echo "$t"
}
HZ=$(getconf CLK_TCK)

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
maxof() { sort -g | tail -1; }
calc() { awk "BEGIN {printf \"%.${2:-2}f\", ($1)}"; }

# wrk_latency_ms FILE PCT: wrk's "--latency" percentile in milliseconds.
wrk_latency_ms() {
	awk -v pct="$2%" '$1 == pct {
		v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
		if (u == "us") v /= 1000; else if (u == "s") v *= 1000; else if (u == "m") v *= 60000
		printf "%.3f\n", v }' "$1"
}

# --- machine ----------------------------------------------------------------

{
	echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "nproc: $(nproc)"
	echo "cpu: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
	echo "memory: $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
	echo "kernel: $(uname -sr)"
	echo "os: $(. /etc/os-release && echo "$PRETTY_NAME")"
	echo "nix: $(nix --version)"
	echo "nginx: $(nginx -v 2>&1)"
	echo "wrk: $(wrk -v 2>&1 | head -1)"
	echo "hyperfine: $(hyperfine --version)"
	echo "curl: $(curl --version | head -1)"
	echo "crystal-forge: $("$BIN" version)"
	echo "nix copy destination: $DST"
} >"$RESULTS/machine.txt"
# A benchmark on a busy machine measures the other load: say so up front.
# busy_pct [SECONDS]: how busy all CPUs are over a short sample, in percent.
busy_pct() {
	local a b
	read -r -a a < <(head -1 /proc/stat)
	sleep "${1:-1}"
	read -r -a b < <(head -1 /proc/stat)
	awk -v u=$((b[1] + b[2] + b[3] + b[6] + b[7] + b[8] - a[1] - a[2] - a[3] - a[6] - a[7] - a[8])) \
		-v i=$((b[4] + b[5] - a[4] - a[5])) 'BEGIN {printf "%.0f", 100 * u / (u + i)}'
}
# user+nice+system ticks of the whole machine, to tell afterwards how much
# CPU went to processes other than this script's (see "others" below).
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4}' /proc/stat; }
own_ticks() { sed 's/^.*) //' /proc/$$/stat | awk '{print $12 + $13 + $14 + $15}'; }
# phase_begin / phase_end NAME: the share of the CPUs that processes other
# than this script, its children and the servers used during a phase
# (approximate: kernel softirq work for the loopback traffic is not counted).
# Appends "NAME ~N%" to PHASES.
PHASES=()
srv_ticks() { echo $(($(cpu_ticks "$NGINX_PID") + $(cpu_ticks "$CF_PID") + $(cpu_ticks "$CFN_PID"))); }
phase_begin() { PH0=("$(machine_ticks)" "$(own_ticks)" "$(srv_ticks)" "$(date +%s.%N)"); }
phase_end() {
	local pct
	pct=$(calc "100 * ($(machine_ticks) - ${PH0[0]} - ($(own_ticks) - ${PH0[1]}) - ($(srv_ticks) - ${PH0[2]})) / $HZ / ($(date +%s.%N) - ${PH0[3]}) / $(nproc)" 0)
	[ "$pct" -ge 0 ] || pct=0
	PHASES+=("$1 ~$pct%")
	[ "$pct" -lt 10 ] || log "warning: other processes used ~$pct% of the CPUs during $1; those numbers are noisy"
}
BUSY=$(busy_pct)
# On a shared machine, give other jobs a chance to finish first.
if [ "$BUSY" -ge 20 ] && [ "$WAIT_IDLE" -gt 0 ]; then
	log "the machine is ${BUSY}% busy: waiting up to ${WAIT_IDLE}s for it to calm down (BENCH_WAIT_IDLE)"
	deadline=$(($(date +%s) + WAIT_IDLE))
	while [ "$BUSY" -ge 20 ] && [ "$(date +%s)" -lt "$deadline" ]; do BUSY=$(busy_pct 3); done
fi
RUN_T0=$(machine_ticks) RUN_OWN0=$(own_ticks) RUN_START=$(date +%s)
echo "cpu busy before start: ${BUSY}% (last 1-3 s sample, all CPUs)" >>"$RESULTS/machine.txt"
[ "$BUSY" -lt 20 ] || log "warning: the machine is already ${BUSY}% busy; numbers will be noisy"
log "machine: $(nproc) CPUs, $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(nix --version), results in $RESULTS"

# --- the store paths --------------------------------------------------------

log "building $SMALL small paths + one ${LARGE_MIB} MiB path (bench/paths.nix; no-op when already built)"
t0=$(date +%s.%N)
nix-build bench/paths.nix --arg small "$SMALL" --arg largeMiB "$LARGE_MIB" \
	--no-out-link --max-jobs 4 --cores 1 >"$WORK/paths.txt" 2>"$RESULTS/build.log" ||
	{ tail -20 "$RESULTS/build.log" >&2; die "nix-build failed"; }
log "built/found $(wc -l <"$WORK/paths.txt") paths in $(calc "$(date +%s.%N) - $t0" 1) s"
cp "$WORK/paths.txt" "$RESULTS/paths.txt"
[ "$(wc -l <"$WORK/paths.txt")" -eq $((SMALL + 1)) ] || die "expected $((SMALL + 1)) paths"
LARGE=$(grep -- '-cf-bench-large$' "$WORK/paths.txt")
LARGE_HASH=$(basename "$LARGE" | cut -c1-32)
mapfile -t PATHS <"$WORK/paths.txt"
read -r LARGE_NAR_SIZE < <(nix path-info -s "$LARGE" | awk '{print $2}')
TOTAL_NAR_SIZE=$(nix path-info -s "${PATHS[@]}" | awk '{s += $2} END {print s}')
SMALL_AVG=$(calc "($TOTAL_NAR_SIZE - $LARGE_NAR_SIZE) / $SMALL / 1024" 1)
log "NAR sizes: large $LARGE_NAR_SIZE bytes, small ones $SMALL_AVG KiB on average, total $(calc "$TOTAL_NAR_SIZE / 1048576" 1) MiB"

# --- key and flat-file cache ------------------------------------------------

"$BIN" keygen --key-file "$WORK/key" --name cf-bench-1 >"$WORK/pub" 2>/dev/null
PUB=$(cat "$WORK/pub")
log "flat-file cache: nix copy --to file://…?compression=none, narinfos signed with the bench key"
nix copy --to "file://$WORK/flat?compression=none&secret-key=$WORK/key" "${PATHS[@]}" 2>"$WORK/flat-copy.log" ||
	{ tail -20 "$WORK/flat-copy.log" >&2; die "nix copy to the flat-file cache failed"; }
sync

# --- servers ----------------------------------------------------------------

NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx/tmp"
{
	[ "$(id -u)" -ne 0 ] || echo "user root;  # the flat-file cache is in a root-owned temp dir"
	cat <<EOF
worker_processes auto;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    types {
        text/x-nix-narinfo narinfo;
        text/x-nix-cache-info nix-cache-info;
        application/x-nix-nar nar;
    }
    default_type application/octet-stream;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $WORK/flat;
    }
}
EOF
} >"$WORK/nginx/nginx.conf"
cp "$WORK/nginx/nginx.conf" "$RESULTS/nginx.conf"
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" >"$WORK/nginx/stdout.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_up "$NGINX_PID" "$NGINX_PORT" || { cat "$WORK/nginx/stdout.log" "$WORK/nginx/error.log" >&2 || true; die "nginx did not start"; }

# start_ours NAME ARGS...: our cache on a free port; sets OURS_PID/OURS_PORT.
start_ours() {
	local name=$1
	shift
	OURS_PORT=$(free_port)
	"$BIN" cache --listen "127.0.0.1:$OURS_PORT" --key-file "$WORK/key" "$@" >"$WORK/$name.log" 2>&1 &
	OURS_PID=$!
	PIDS+=("$OURS_PID")
	wait_up "$OURS_PID" "$OURS_PORT" || { cat "$WORK/$name.log" >&2; die "crystal-forge ($name) did not start"; }
}
start_ours ours
CF_PID=$OURS_PID CF_PORT=$OURS_PORT
start_ours ours-none --compression none
CFN_PID=$OURS_PID CFN_PORT=$OURS_PORT
log "nginx on 127.0.0.1:$NGINX_PORT, ours on 127.0.0.1:$CF_PORT (default, --compression zstd) and 127.0.0.1:$CFN_PORT (--compression none)"

# Both caches must describe the large path identically.
narinfo_field() { curl -sf "http://127.0.0.1:$1/$LARGE_HASH.narinfo" | sed -n "s/^$2: //p"; }
[ "$(narinfo_field "$NGINX_PORT" NarHash)" = "$(narinfo_field "$CF_PORT" NarHash)" ] ||
	die "nginx and ours disagree on the NarHash of $LARGE"
NGINX_NAR_URL=http://127.0.0.1:$NGINX_PORT/$(narinfo_field "$NGINX_PORT" URL)
CF_NAR_URL=http://127.0.0.1:$CF_PORT/$(narinfo_field "$CF_PORT" URL)
{
	echo "== nginx $LARGE_HASH.narinfo"
	curl -sf "http://127.0.0.1:$NGINX_PORT/$LARGE_HASH.narinfo"
	echo "== ours $LARGE_HASH.narinfo"
	curl -sf "http://127.0.0.1:$CF_PORT/$LARGE_HASH.narinfo"
} >"$RESULTS/narinfo-samples.txt"

# --- 1. narinfo requests/s ---------------------------------------------------

# lua_script URLS OUT: a wrk script GETting random URLs (one per line of the
# file URLS). Each thread has a fixed seed: both servers get the same sequence.
lua_script() {
	{
		echo "-- Generated by bench/cache.sh: GET a random URL of the bench set."
		echo "local paths = {"
		sed 's/.*/  "&",/' "$1"
		echo "}"
		cat <<'EOF'
local reqs = {}
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
function init(args)
  math.randomseed(4242 + id)
  for i, p in ipairs(paths) do reqs[i] = wrk.format("GET", p) end
end
function request()
  return reqs[math.random(#reqs)]
end
EOF
	} >"$2"
	cp "$2" "$RESULTS/"
}
for p in "${PATHS[@]}"; do echo "/$(basename "$p" | cut -c1-32).narinfo"; done >"$WORK/narinfo-urls"
lua_script "$WORK/narinfo-urls" "$WORK/narinfo.lua"
# The small paths' NAR URLs as each server's narinfos name them (read from
# the flat-file narinfos; ours are nar/<NarHash>.nar?hash=<store hash>).
for p in "${PATHS[@]}"; do
	[ "$p" != "$LARGE" ] || continue
	h=$(basename "$p" | cut -c1-32)
	awk -v h="$h" -v nf="$WORK/nar-urls-nginx" -v of="$WORK/nar-urls-ours" '
		/^URL: / {u = $2} /^NarHash: / {sub(/^sha256:/, "", $2); n = $2}
		END {print "/" u >> nf; print "/nar/" n ".nar?hash=" h >> of}' "$WORK/flat/$h.narinfo"
done
lua_script "$WORK/nar-urls-nginx" "$WORK/small-nar-nginx.lua"
lua_script "$WORK/nar-urls-ours" "$WORK/small-nar-ours.lua"

# run_wrk NAME PORT PID SECONDS OUT SCRIPT THREADS CONNS: one wrk run; appends
# "req/s p50ms p99ms cores" to OUT.summary (cores: the server's CPU time /
# wall time).
run_wrk() {
	local name=$1 port=$2 pid=$3 secs=$4 out=$5 script=$6 threads=$7 conns=$8 t0 t1
	t0=$(cpu_ticks "$pid")
	wrk -t"$threads" -c"$conns" -d"${secs}s" --timeout 5s --latency -s "$script" "http://127.0.0.1:$port" >"$out"
	t1=$(cpu_ticks "$pid")
	if grep -q 'Non-2xx or 3xx responses' "$out"; then
		cat "$out" >&2
		die "$name answered non-2xx ($out)"
	fi
	grep -q 'Socket errors' "$out" && log "warning: $name: $(grep 'Socket errors' "$out")"
	echo "$(awk '/^Requests\/sec:/ {print $2}' "$out") $(wrk_latency_ms "$out" 50) $(wrk_latency_ms "$out" 99) $(calc "($t1 - $t0) / $HZ / $secs" 2)" >>"$out.summary"
}

narinfo_wrk() { run_wrk "$1" "$2" "$3" "$4" "$5" "$WORK/narinfo.lua" 2 64; }
phase_begin
log "narinfo: warming both servers (${WRK_WARMUP_SECONDS}s wrk each)"
narinfo_wrk nginx "$NGINX_PORT" "$NGINX_PID" "$WRK_WARMUP_SECONDS" "$RESULTS/wrk-narinfo-nginx-warmup.txt"
narinfo_wrk ours "$CF_PORT" "$CF_PID" "$WRK_WARMUP_SECONDS" "$RESULTS/wrk-narinfo-ours-warmup.txt"
rm -f "$RESULTS"/wrk-*.summary
for r in $(seq "$WRK_ROUNDS"); do
	# Alternate who goes first, so drift in the machine favours neither.
	if [ $((r % 2)) -eq 1 ]; then order="nginx ours"; else order="ours nginx"; fi
	log "narinfo: round $r/$WRK_ROUNDS: wrk -t2 -c64 -d${WRK_SECONDS}s, ${order/ / then }"
	for who in $order; do
		if [ "$who" = nginx ]; then
			narinfo_wrk nginx "$NGINX_PORT" "$NGINX_PID" "$WRK_SECONDS" "$RESULTS/wrk-narinfo-nginx-$r.txt"
		else
			narinfo_wrk ours "$CF_PORT" "$CF_PID" "$WRK_SECONDS" "$RESULTS/wrk-narinfo-ours-$r.txt"
		fi
		cat "$RESULTS/wrk-narinfo-$who-$r.txt.summary" >>"$RESULTS/wrk-narinfo-$who.summary"
	done
	log "  nginx $(tail -1 "$RESULTS/wrk-narinfo-nginx.summary" | awk '{printf "%.0f req/s, p99 %s ms, server %s CPUs", $1, $3, $4}')"
	log "  ours  $(tail -1 "$RESULTS/wrk-narinfo-ours.summary" | awk '{printf "%.0f req/s, p99 %s ms, server %s CPUs", $1, $3, $4}')"
done
phase_end "narinfo wrk"
# Medians over the rounds, of each column on its own.
col_median() { awk -v c="$2" '{print $c}' "$1" | median; }
NI_NGINX=$(col_median "$RESULTS/wrk-narinfo-nginx.summary" 1)
NI_NGINX_P99=$(col_median "$RESULTS/wrk-narinfo-nginx.summary" 3)
NI_NGINX_CPU=$(col_median "$RESULTS/wrk-narinfo-nginx.summary" 4)
NI_OURS=$(col_median "$RESULTS/wrk-narinfo-ours.summary" 1)
NI_OURS_P99=$(col_median "$RESULTS/wrk-narinfo-ours.summary" 3)
NI_OURS_CPU=$(col_median "$RESULTS/wrk-narinfo-ours.summary" 4)

# One connection, one request at a time: the latency a sequential client such
# as nix copy sees, for narinfos and for the small paths' NARs.
phase_begin
log "one connection (wrk -t1 -c1 -d${ONE_SECONDS}s): narinfos and small NARs, nginx and ours"
run_wrk nginx "$NGINX_PORT" "$NGINX_PID" "$ONE_SECONDS" "$RESULTS/wrk-1conn-narinfo-nginx.txt" "$WORK/narinfo.lua" 1 1
run_wrk ours "$CF_PORT" "$CF_PID" "$ONE_SECONDS" "$RESULTS/wrk-1conn-narinfo-ours.txt" "$WORK/narinfo.lua" 1 1
run_wrk nginx "$NGINX_PORT" "$NGINX_PID" 1 "$WORK/warm" "$WORK/small-nar-nginx.lua" 1 1
run_wrk ours "$CF_PORT" "$CF_PID" 1 "$WORK/warm" "$WORK/small-nar-ours.lua" 1 1
run_wrk nginx "$NGINX_PORT" "$NGINX_PID" "$ONE_SECONDS" "$RESULTS/wrk-1conn-smallnar-nginx.txt" "$WORK/small-nar-nginx.lua" 1 1
run_wrk ours "$CF_PORT" "$CF_PID" "$ONE_SECONDS" "$RESULTS/wrk-1conn-smallnar-ours.txt" "$WORK/small-nar-ours.lua" 1 1
phase_end "1-connection wrk"
read -r ONI_NGINX ONI_NGINX_P50 _ _ <"$RESULTS/wrk-1conn-narinfo-nginx.txt.summary"
read -r ONI_OURS ONI_OURS_P50 _ _ <"$RESULTS/wrk-1conn-narinfo-ours.txt.summary"
read -r OSN_NGINX OSN_NGINX_P50 _ _ <"$RESULTS/wrk-1conn-smallnar-nginx.txt.summary"
read -r OSN_OURS OSN_OURS_P50 _ _ <"$RESULTS/wrk-1conn-smallnar-ours.txt.summary"
rm -f "$RESULTS"/wrk-*.txt.summary
log "  narinfo: nginx $(calc "$ONI_NGINX" 0) req/s, ours $(calc "$ONI_OURS" 0) req/s; small NAR: nginx $(calc "$OSN_NGINX" 0) req/s, ours $(calc "$OSN_OURS" 0) req/s"

# --- 2. NAR throughput, one connection ---------------------------------------

# nar_get NAME URL [curl args]: one download; appends "http_code bytes
# seconds" to nar-NAME.txt.
nar_get() {
	local name=$1 url=$2 code bytes secs
	shift 2
	curl -sS -o /dev/null -w '%{http_code} %{size_download} %{time_total}\n' "$@" "$url" >"$WORK/nar-run"
	read -r code bytes secs <"$WORK/nar-run"
	[ "$code" = 200 ] || die "$name: NAR download answered $code"
	cat "$WORK/nar-run" >>"$RESULTS/nar-$name.txt"
}
log "NAR: one-connection downloads of the $LARGE_MIB MiB NAR after a warm-up: nginx and ours raw ($NAR_RUNS each, alternating), ours zstd ($NAR_ZSTD_RUNS)"
rm -f "$RESULTS"/nar-*.txt
phase_begin
nar_get warmup "$NGINX_NAR_URL"
nar_get warmup "$CF_NAR_URL"
for r in $(seq "$NAR_RUNS"); do
	nar_get nginx "$NGINX_NAR_URL"
	nar_get ours-raw "$CF_NAR_URL"
done
curl -sS -D "$RESULTS/nar-ours-zstd-headers.txt" -o /dev/null -H 'Accept-Encoding: zstd' "$CF_NAR_URL"
grep -qi '^content-encoding: *zstd' "$RESULTS/nar-ours-zstd-headers.txt" || die "ours did not answer Accept-Encoding: zstd with zstd"
for r in $(seq "$NAR_ZSTD_RUNS"); do nar_get ours-zstd "$CF_NAR_URL" -H 'Accept-Encoding: zstd'; done
phase_end "NAR downloads"
for f in nginx ours-raw; do
	awk -v want="$LARGE_NAR_SIZE" -v f="$f" '$2 != want {print f ": got " $2 " bytes, want " want; exit 1}' "$RESULTS/nar-$f.txt" ||
		die "short NAR download"
done
if command -v zstd >/dev/null; then
	got=$(curl -sS -H 'Accept-Encoding: zstd' "$CF_NAR_URL" | zstd -dc | wc -c)
	[ "$got" -eq "$LARGE_NAR_SIZE" ] || die "ours zstd NAR decompresses to $got bytes, want $LARGE_NAR_SIZE"
fi
# MiB/s of NAR delivered (NAR bytes / total time), median and best.
nar_rate() { awk -v n="$LARGE_NAR_SIZE" '{print n / $3 / 1048576}' "$RESULTS/nar-$1.txt" | $2; }
NAR_NGINX=$(nar_rate nginx median) NAR_NGINX_BEST=$(nar_rate nginx maxof)
NAR_OURS=$(nar_rate ours-raw median) NAR_OURS_BEST=$(nar_rate ours-raw maxof)
NAR_ZSTD=$(nar_rate ours-zstd median) NAR_ZSTD_BEST=$(nar_rate ours-zstd maxof)
ZSTD_WIRE=$(awk '{print $2}' "$RESULTS/nar-ours-zstd.txt" | median)
ZSTD_RATIO=$(calc "$LARGE_NAR_SIZE / $ZSTD_WIRE" 2)
log "  nginx $(calc "$NAR_NGINX" 0) MiB/s, ours raw $(calc "$NAR_OURS" 0) MiB/s, ours zstd $(calc "$NAR_ZSTD" 0) MiB/s of NAR (wire ${ZSTD_RATIO}× smaller)"

# --- 3. nix copy of the whole set --------------------------------------------

# One nix copy run; hyperfine's --prepare empties DST and the client's narinfo
# cache first. Signatures are checked (require-sigs) against the bench key on
# both servers: ours signs on the fly, the flat-file narinfos were signed by
# nix copy --to file://…&secret-key=.
cat >"$WORK/copy.sh" <<EOF
#!/usr/bin/env bash
set -euo pipefail
exec nix copy --from "http://127.0.0.1:\$1" --to "$DST" \\
	--option narinfo-cache-positive-ttl 0 --option narinfo-cache-negative-ttl 0 \\
	--option require-sigs true --option trusted-public-keys "$PUB" \\
	\$(cat "$WORK/paths.txt") 2>"$WORK/copy-\$1.log"
EOF
chmod +x "$WORK/copy.sh"
cat >"$WORK/prepare.sh" <<EOF
#!/usr/bin/env bash
rm -rf "$DST" "$XDG_CACHE_HOME"/nix/binary-cache-v*.sqlite*
EOF
chmod +x "$WORK/prepare.sh"
cp "$WORK/copy.sh" "$RESULTS/copy.sh"

nar_bytes() { curl -sf "http://127.0.0.1:$1/metrics" | awk '/^crystal_forge_cache_response_bytes_total\{endpoint="nar"\}/ {printf "%.0f\n", $2}'; }
CN_NGINX="nginx (flat file, compression=none)"
CN_OURS="ours (default: --compression zstd)"
CN_NONE="ours (--compression none)"
log "nix copy: $((SMALL + 1)) paths into a fresh store ($DST), $COPY_ROUNDS rounds of hyperfine --runs 2 (+1 warm-up in round 1), the three servers in rotating order"
phase_begin
cpu0_nginx=$(cpu_ticks "$NGINX_PID") cpu0_cf=$(cpu_ticks "$CF_PID") cpu0_cfn=$(cpu_ticks "$CFN_PID")
bytes0_cf=$(nar_bytes "$CF_PORT") bytes0_cfn=$(nar_bytes "$CFN_PORT")
# Rounds rather than one hyperfine call, so that a burst of other load on the
# machine hits all three alike instead of whichever ran during it. Each
# command talks to its own server process, so each server's CPU and byte
# counters belong to its command alone.
: >"$RESULTS/copy-hyperfine.txt"
for r in $(seq "$COPY_ROUNDS"); do
	warm=0
	[ "$r" -ne 1 ] || warm=1
	cmds=("$CN_NGINX" "$WORK/copy.sh $NGINX_PORT" "$CN_OURS" "$WORK/copy.sh $CF_PORT" "$CN_NONE" "$WORK/copy.sh $CFN_PORT")
	rot=$((2 * ((r - 1) % 3)))
	cmds=("${cmds[@]:rot}" "${cmds[@]:0:rot}")
	args=()
	for i in 0 2 4; do args+=(--command-name "${cmds[i]}" "${cmds[i + 1]}"); done
	log "  round $r/$COPY_ROUNDS: ${cmds[0]}, ${cmds[2]}, ${cmds[4]}"
	echo "=== round $r" >>"$RESULTS/copy-hyperfine.txt"
	if ! hyperfine --style basic --warmup "$warm" --runs 2 --prepare "$WORK/prepare.sh" \
		--export-json "$RESULTS/copy-$r.json" "${args[@]}" >>"$RESULTS/copy-hyperfine.txt" 2>&1; then
		cat "$RESULTS/copy-hyperfine.txt" >&2
		for f in "$WORK"/copy-*.log; do [ -f "$f" ] && { echo "== $f"; tail -20 "$f"; } >&2; done
		die "nix copy benchmark failed"
	fi
done
cpu_nginx=$(cpu_ticks "$NGINX_PID") cpu_cf=$(cpu_ticks "$CF_PID") cpu_cfn=$(cpu_ticks "$CFN_PID")
bytes_cf=$(nar_bytes "$CF_PORT") bytes_cfn=$(nar_bytes "$CFN_PORT")
phase_end copy
COPY_RUNS=$((2 * COPY_ROUNDS))
NRUNS=$((COPY_RUNS + 1)) # the warm-up run counts for CPU and bytes
n_dst=$(nix path-info --store "$DST" --all 2>/dev/null | wc -l)
[ "$n_dst" -ge $((SMALL + 1)) ] || die "the last nix copy left $n_dst paths in $DST, want $((SMALL + 1))"
# Every run's time, "command<TAB>seconds", from the hyperfine JSON exports.
awk '
	/"command":/ { c = $0; sub(/^[^:]*: *"/, "", c); sub(/",? *$/, "", c) }
	/"times":/ { t = 1; next }
	t && /\]/ { t = 0; next }
	t { v = $1; sub(/,$/, "", v); print c "\t" v }' "$RESULTS"/copy-[0-9]*.json >"$RESULTS/copy-times.tsv"
copy_times() { awk -F'\t' -v c="$1" '$1 == c {print $2}' "$RESULTS/copy-times.tsv"; }
copy_mean() { copy_times "$1" | awk '{s += $1} END {print s / NR}'; }
copy_sd() { copy_times "$1" | awk '{s += $1; q += $1 * $1} END {m = s / NR; v = NR > 1 ? (q - NR * m * m) / (NR - 1) : 0; print sqrt(v > 0 ? v : 0)}'; }
[ "$(copy_times "$CN_NGINX" | wc -l)" -eq "$COPY_RUNS" ] || die "expected $COPY_RUNS nginx runs in $RESULTS/copy-times.tsv"
CP_NGINX=$(copy_mean "$CN_NGINX") CP_OURS=$(copy_mean "$CN_OURS") CP_NONE=$(copy_mean "$CN_NONE")
CP_NGINX_SD=$(copy_sd "$CN_NGINX") CP_OURS_SD=$(copy_sd "$CN_OURS") CP_NONE_SD=$(copy_sd "$CN_NONE")
CP_NGINX_MED=$(copy_times "$CN_NGINX" | median) CP_OURS_MED=$(copy_times "$CN_OURS" | median) CP_NONE_MED=$(copy_times "$CN_NONE" | median)
CPU_CP_NGINX=$(calc "($cpu_nginx - $cpu0_nginx) / $HZ / $NRUNS" 2)
CPU_CP_OURS=$(calc "($cpu_cf - $cpu0_cf) / $HZ / $NRUNS" 2)
CPU_CP_NONE=$(calc "($cpu_cfn - $cpu0_cfn) / $HZ / $NRUNS" 2)
WIRE_CP_OURS=$(calc "($bytes_cf - $bytes0_cf) / $NRUNS / 1048576" 1)
WIRE_CP_NONE=$(calc "($bytes_cfn - $bytes0_cfn) / $NRUNS / 1048576" 1)
NAR_MIB=$(calc "$TOTAL_NAR_SIZE / 1048576" 1)
log "  nginx $(calc "$CP_NGINX" 3) s, ours $(calc "$CP_OURS" 3) s, ours --compression none $(calc "$CP_NONE" 3) s (means)"
{
	echo "server CPU seconds per nix copy run: nginx $CPU_CP_NGINX, ours $CPU_CP_OURS, ours --compression none $CPU_CP_NONE"
	echo "NAR bytes sent per run by ours: $WIRE_CP_OURS MiB (default), $WIRE_CP_NONE MiB (--compression none); NARs total $NAR_MIB MiB"
	echo "paths in the destination after the last run: $n_dst"
} >>"$RESULTS/copy-hyperfine.txt"
if [ "$(calc "$WIRE_CP_OURS < 0.9 * $NAR_MIB" 0)" = 1 ]; then
	ZSTD_NOTE="the Nix client accepted zstd: $WIRE_CP_OURS MiB on the wire for $NAR_MIB MiB of NARs"
else
	ZSTD_NOTE="this Nix client did not ask for zstd (no Accept-Encoding): $WIRE_CP_OURS MiB sent for $NAR_MIB MiB of NARs, so both of our rows are raw NARs"
fi

# --- summary -----------------------------------------------------------------

# CPU the rest of the machine used meanwhile: all user+system time minus this
# script's, its finished children's (wrk, curl, nix, hyperfine…) and the
# servers'. Approximate (kernel network softirq work is not counted anywhere),
# but a large value means the numbers above measured someone else's load too.
OTHERS=$(calc "100 * ($(machine_ticks) - $RUN_T0 - ($(own_ticks) - $RUN_OWN0) - $(srv_ticks)) / $HZ / ($(date +%s) - $RUN_START) / $(nproc)" 0)

verdict() { if [ "$(calc "$1" 0)" = 1 ]; then echo met; else echo MISSED; fi; }
R_NI=$(calc "$NI_OURS / $NI_NGINX")
R_P99=$(calc "$NI_OURS_P99 / $NI_NGINX_P99")
R_NAR=$(calc "$NAR_OURS / $NAR_NGINX")
R_ZSTD=$(calc "$NAR_ZSTD / $NAR_NGINX")
R_CP=$(calc "$CP_OURS / $CP_NGINX")
R_CPN=$(calc "$CP_NONE / $CP_NGINX")
{
	echo "Crystal Forge cache vs nginx flat-file cache, $(date -u +%Y-%m-%d), $(nproc) CPUs, $(nix --version)"
	echo "Paths: $SMALL small (avg NAR $SMALL_AVG KiB) + 1 large ($(calc "$LARGE_NAR_SIZE / 1048576" 1) MiB NAR); all on 127.0.0.1, client and servers share the CPUs."
	echo
	printf '| %-52s | %12s | %12s | %10s | %-8s | %-6s |\n' metric nginx ours ours/nginx target result
	printf '|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..54})" "$(printf -- '-%.0s' {1..14})" "$(printf -- '-%.0s' {1..14})" "$(printf -- '-%.0s' {1..12})" "$(printf -- '-%.0s' {1..10})" "$(printf -- '-%.0s' {1..8})"
	printf '| %-52s | %12s | %12s | %10s | %-8s | %-6s |\n' \
		"narinfo req/s (wrk -t2 -c64 ${WRK_SECONDS}s, median of $WRK_ROUNDS)" "$(calc "$NI_NGINX" 0)" "$(calc "$NI_OURS" 0)" "$R_NI" ">= 1.00" "$(verdict "$R_NI >= 1.0")"
	printf '| %-52s | %12s | %12s | %10s | %-8s | %-6s |\n' \
		"narinfo p99 latency, ms (median of the rounds)" "$NI_NGINX_P99" "$NI_OURS_P99" "$R_P99" "info" ""
	printf '| %-52s | %12s | %12s | %10s | %-8s | %-6s |\n' \
		"server CPUs busy during narinfo wrk (median)" "$NI_NGINX_CPU" "$NI_OURS_CPU" "$(calc "$NI_OURS_CPU / $NI_NGINX_CPU")" "info" ""
	printf '| %-52s | %12s | %12s | %10s | %-8s | %-6s |\n' \
		"narinfo req/s, 1 conn (wrk -t1 -c1 ${ONE_SECONDS}s)" "$(calc "$ONI_NGINX" 0)" "$(calc "$ONI_OURS" 0)" "$(calc "$ONI_OURS / $ONI_NGINX")" "info" ""
	printf '| %-52s | %12s | %12s | %10s | %-8s | %-6s |\n' \
		"narinfo p50 latency, 1 conn, ms" "$ONI_NGINX_P50" "$ONI_OURS_P50" "$(calc "$ONI_OURS_P50 / $ONI_NGINX_P50")" "info" ""
	printf '| %-52s | %12s | %12s | %10s | %-8s | %-6s |\n' \
		"small NAR req/s, 1 conn (wrk -t1 -c1 ${ONE_SECONDS}s)" "$(calc "$OSN_NGINX" 0)" "$(calc "$OSN_OURS" 0)" "$(calc "$OSN_OURS / $OSN_NGINX")" "info" ""
	printf '| %-52s | %12s | %12s | %10s | %-8s | %-6s |\n' \
		"small NAR p50 latency, 1 conn, ms" "$OSN_NGINX_P50" "$OSN_OURS_P50" "$(calc "$OSN_OURS_P50 / $OSN_NGINX_P50")" "info" ""
	printf '| %-52s | %12s | %12s | %10s | %-8s | %-6s |\n' \
		"NAR MiB/s, 1 conn, raw (median of $NAR_RUNS)" "$(calc "$NAR_NGINX" 0)" "$(calc "$NAR_OURS" 0)" "$R_NAR" ">= 0.80" "$(verdict "$R_NAR >= 0.8")"
	printf '| %-52s | %12s | %12s | %10s | %-8s | %-6s |\n' \
		"NAR MiB/s, 1 conn, raw (best of $NAR_RUNS)" "$(calc "$NAR_NGINX_BEST" 0)" "$(calc "$NAR_OURS_BEST" 0)" "$(calc "$NAR_OURS_BEST / $NAR_NGINX_BEST")" "info" ""
	printf '| %-52s | %12s | %12s | %10s | %-8s | %-6s |\n' \
		"NAR MiB/s, ours with Accept-Encoding: zstd (median)" "(raw) $(calc "$NAR_NGINX" 0)" "$(calc "$NAR_ZSTD" 0)" "$R_ZSTD" "info" ""
	printf '| %-52s | %12s | %12s | %10s | %-8s | %-6s |\n' \
		"nix copy of all paths, s (mean of $COPY_RUNS), ours default" "$(calc "$CP_NGINX" 3)" "$(calc "$CP_OURS" 3)" "$R_CP" "<= 1.10" "$(verdict "$R_CP <= 1.1")"
	printf '| %-52s | %12s | %12s | %10s | %-8s | %-6s |\n' \
		"nix copy of all paths, s (mean), ours --compression none" "$(calc "$CP_NGINX" 3)" "$(calc "$CP_NONE" 3)" "$R_CPN" "<= 1.10" "$(verdict "$R_CPN <= 1.1")"
	printf '| %-52s | %12s | %12s | %10s | %-8s | %-6s |\n' \
		"server CPU s per nix copy run (default / none)" "$CPU_CP_NGINX" "$CPU_CP_OURS / $CPU_CP_NONE" "$(calc "$CPU_CP_OURS / $CPU_CP_NGINX")" "info" ""
	echo
	echo "nix copy over $COPY_RUNS runs each: stddev nginx $(calc "$CP_NGINX_SD" 3) s, ours $(calc "$CP_OURS_SD" 3) s, ours --compression none $(calc "$CP_NONE_SD" 3) s;" \
		"medians $(calc "$CP_NGINX_MED" 3) s, $(calc "$CP_OURS_MED" 3) s, $(calc "$CP_NONE_MED" 3) s (ours/nginx $(calc "$CP_OURS_MED / $CP_NGINX_MED"), $(calc "$CP_NONE_MED / $CP_NGINX_MED"))."
	echo "zstd NAR: $(calc "$ZSTD_WIRE / 1048576" 1) MiB on the wire for the $(calc "$LARGE_NAR_SIZE / 1048576" 1) MiB NAR (${ZSTD_RATIO}x); MiB/s counts NAR bytes delivered."
	echo "nix copy: $ZSTD_NOTE."
	echo "Signatures: checked (require-sigs = true, trusted-public-keys = the bench key) against both servers."
	echo "Other processes' CPU use (share of all CPUs; ~0% for trustworthy numbers): whole run ~${OTHERS}%; $(IFS=,; echo "${PHASES[*]}" | sed 's/,/, /g'). Busy before the start: ${BUSY}%."
	echo "Raw outputs: $RESULTS"
} >"$RESULTS/summary.md"
echo
cat "$RESULTS/summary.md"
