#!/usr/bin/env bash
# Benchmarks of the cache's uploads, S3 storage and garbage collection
# (issue 11), side by side in one run, on 127.0.0.1 only. Run it as part of
# `make bench`, or alone after `make build`.
#
#   1. upload: `nix copy --to http://…` into `crystal-forge cache` (token
#      from a netrc file, directory backend, zstd) against `nix copy --to
#      file://…?compression=zstd` (the limit), on the bench/paths.nix set
#      (1,000 small paths + one 256 MiB path), fresh destination each run;
#      and against a null HTTP cache that stores nothing (storagefixture
#      null-cache): the cost of Nix's HTTP client alone, which no HTTP
#      cache can beat.
#   2. serving: one-connection narinfo rate (curl reusing one connection,
#      warm: best of five passes after the first) and one-connection NAR throughput of the large
#      path, from a cache serving an S3 bucket (versitygw, filled by
#      `nix copy --to` that cache) against the same from the local store.
#   3. `cache gc` on 100,000 objects (50,000 narinfos + 50,000 NARs, a month
#      old, ten pins): wall time and peak memory, --dry-run and real.
#
# Knobs: BENCH_SMALL [1000], BENCH_LARGE_MIB [256], BENCH_COPY_RUNS [2],
# BENCH_GC_PATHS [50000]. Raw outputs go to bench/results/<timestamp>/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export GOTOOLCHAIN=local LC_ALL=C
SMALL=${BENCH_SMALL:-1000}
LARGE_MIB=${BENCH_LARGE_MIB:-256}
COPY_RUNS=${BENCH_COPY_RUNS:-2}
GC_PATHS=${BENCH_GC_PATHS:-50000}
BIN=$ROOT/bin/crystal-forge
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters =\nsandbox = false'

log() { printf '[bench-storage %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
calc() { awk "BEGIN {printf \"%.${2:-2}f\", ($1)}"; }
now() { date +%s.%N; }

VGW=$(command -v versitygw || echo "$(go env GOPATH)/bin/versitygw")
for tool in nix nix-build curl /usr/bin/time "$VGW"; do
	command -v "$tool" >/dev/null || [ -x "$tool" ] || die "$tool not found (make test installs versitygw; apt-get install time)"
done
[ -x "$BIN" ] || die "$BIN missing: run make build"

STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS=$ROOT/bench/results/storage-$STAMP
mkdir -p "$RESULTS"
WORK=$(mktemp -d /tmp/cf-bench-storage.XXXXXX)
FIXTURE=$WORK/storagefixture
go build -o "$FIXTURE" ./bench/storagefixture
export XDG_CACHE_HOME=$WORK/xdg-cache
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	chmod -R u+w "$WORK" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() {
	for _ in $(seq 100); do
		curl -sf -o /dev/null "$1" && return 0
		sleep 0.1
	done
	return 1
}
{
	echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "nproc: $(nproc)"
	echo "cpu: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
	echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "nix: $(nix --version)"
} >"$RESULTS/machine.txt"
log "load average $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs; results in $RESULTS"

log "building $SMALL small paths + one ${LARGE_MIB} MiB path (bench/paths.nix)"
nix-build bench/paths.nix --arg small "$SMALL" --arg largeMiB "$LARGE_MIB" --no-out-link --max-jobs 4 --cores 1 \
	>"$WORK/paths.txt" 2>"$RESULTS/build.log" || { tail -20 "$RESULTS/build.log" >&2; die "nix-build failed"; }
mapfile -t PATHS <"$WORK/paths.txt"
LARGE=$(grep -- '-cf-bench-large$' "$WORK/paths.txt")
LARGE_HASH=$(basename "$LARGE" | cut -c1-32)
LARGE_NAR=$(nix path-info -s "$LARGE" | awk '{print $2}')

"$BIN" keygen --key-file "$WORK/key" --name cf-bench-1 >"$WORK/pub" 2>/dev/null
echo "bench:tok-$RANDOM$RANDOM" >"$WORK/tokens"
TOKEN=$(cut -d: -f2 "$WORK/tokens")
echo "machine 127.0.0.1 login bench password $TOKEN" >"$WORK/netrc"

# start_cache NAME ARGS...: a cache on a free port; sets PORT.
start_cache() {
	local name=$1
	shift
	PORT=$(free_port)
	"$BIN" cache --listen "127.0.0.1:$PORT" --key-file "$WORK/key" "$@" >"$WORK/$name.log" 2>&1 &
	PIDS+=("$!")
	wait_up "http://127.0.0.1:$PORT/nix-cache-info" || { cat "$WORK/$name.log" >&2; die "cache $name did not start"; }
}

# --- 1. uploads ---------------------------------------------------------------
copy_time() { # DEST-URL: seconds for nix copy of the whole set
	local t0
	rm -rf "$XDG_CACHE_HOME"
	t0=$(now)
	nix copy --option netrc-file "$WORK/netrc" --to "$1" "${PATHS[@]}" 2>>"$RESULTS/copy.log" || die "nix copy --to $1 failed (see copy.log)"
	calc "$(now) - $t0" 3
}
# Every run writes into new directories and nothing is deleted until the
# end: on this machine's ext4, creating files in the seconds after thousands
# were deleted was up to 30x slower (0.7 ms instead of 25 us a file,
# measured), which charged whichever side ran right after a deletion. The
# order alternates for the same reason.
NULL_PORT=$(free_port)
"$FIXTURE" null-cache "127.0.0.1:$NULL_PORT" &
PIDS+=("$!")
wait_up "http://127.0.0.1:$NULL_PORT/nix-cache-info" || die "null cache did not start"
ours_run() {
	start_cache "upload-$1" --no-local-store --storage "dir://$WORK/up-$1" --upload-token-file "$WORK/tokens"
	OURS_T+=("$(copy_time "http://127.0.0.1:$PORT?compression=zstd")")
	kill "${PIDS[-1]}"
}
file_run() { FILE_T+=("$(copy_time "file://$WORK/flat-$1?compression=zstd")"); }
OURS_T=() FILE_T=() NULL_T=()
for run in $(seq "$COPY_RUNS"); do
	if ((run % 2)); then ours_run "$run"; file_run "$run"; else file_run "$run"; ours_run "$run"; fi
	NULL_T+=("$(copy_time "http://127.0.0.1:$NULL_PORT?compression=zstd")")
	log "upload run $run: ours ${OURS_T[-1]} s, file:// ${FILE_T[-1]} s, null HTTP cache ${NULL_T[-1]} s"
done
best() { printf '%s\n' "$@" | sort -g | head -1; }
OURS_BEST=$(best "${OURS_T[@]}") FILE_BEST=$(best "${FILE_T[@]}") NULL_BEST=$(best "${NULL_T[@]}")

# --- 2. S3 against the local store ---------------------------------------------
S3_PORT=$(free_port)
export AWS_ACCESS_KEY_ID=cfbench$RANDOM AWS_SECRET_ACCESS_KEY=cfbenchsecret$RANDOM$RANDOM
mkdir -p "$WORK/s3"
ROOT_ACCESS_KEY=$AWS_ACCESS_KEY_ID ROOT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY "$VGW" --port "127.0.0.1:$S3_PORT" posix "$WORK/s3" >"$WORK/vgw.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/" && break; sleep 0.1; done
"$FIXTURE" bucket "http://127.0.0.1:$S3_PORT" bench
S3_URL="s3://bench?endpoint=http://127.0.0.1:$S3_PORT&region=us-east-1"
start_cache s3-upload --no-local-store --storage "$S3_URL" --upload-token-file "$WORK/tokens"
S3_UP_T=$(copy_time "http://127.0.0.1:$PORT?compression=zstd")
log "nix copy --to a cache on S3: $S3_UP_T s"
kill "${PIDS[-1]}"
start_cache s3 --no-local-store --storage "$S3_URL"
S3_PORT_CACHE=$PORT
start_cache local --small-nar-memory 0
LOCAL_PORT=$PORT

for p in "${PATHS[@]}"; do echo "url = \"/$(basename "$p" | cut -c1-32).narinfo\""; echo 'output = "/dev/null"'; done >"$WORK/narinfo.cfg"
narinfo_rate() { # PORT: narinfos/s over one connection, warm: best of 5 passes after the first
	local t0 t best=
	sed "s|url = \"|url = \"http://127.0.0.1:$1|" "$WORK/narinfo.cfg" >"$WORK/narinfo-$1.cfg"
	curl -sf -K "$WORK/narinfo-$1.cfg" || die "narinfo requests to port $1 failed"
	for _ in 1 2 3 4 5; do # one pass is ~0.1 s: too short to trust alone
		t0=$(now)
		curl -sf -K "$WORK/narinfo-$1.cfg"
		t=$(calc "$(now) - $t0" 4)
		if [ -z "$best" ] || [ "$(calc "$t < $best" 0)" = 1 ]; then best=$t; fi
	done
	calc "${#PATHS[@]} / $best" 0
}
nar_mibs() { # PORT: MiB/s of NAR bytes (NarSize over time) and of bytes on the wire
	local url out
	url=$(curl -sf "http://127.0.0.1:$1/$LARGE_HASH.narinfo" | sed -n 's/^URL: //p')
	curl -sf -o /dev/null "http://127.0.0.1:$1/$url" # warm
	out=$(curl -sf -o /dev/null -w '%{time_total} %{size_download}' "http://127.0.0.1:$1/$url")
	awk -v nar="$LARGE_NAR" '{printf "%.0f %.0f\n", nar / $1 / 1048576, $2 / $1 / 1048576}' <<<"$out"
}
S3_RATE=$(narinfo_rate "$S3_PORT_CACHE") LOCAL_RATE=$(narinfo_rate "$LOCAL_PORT")
read -r S3_NAR S3_WIRE < <(nar_mibs "$S3_PORT_CACHE")
read -r LOCAL_NAR LOCAL_WIRE < <(nar_mibs "$LOCAL_PORT")
log "narinfo/s one connection: S3 $S3_RATE, local $LOCAL_RATE; large NAR MiB/s: S3 $S3_NAR (wire $S3_WIRE), local $LOCAL_NAR (wire $LOCAL_WIRE)"

# --- 3. cache gc on 100,000 objects --------------------------------------------
"$FIXTURE" gc-objects "$WORK/gc" "$GC_PATHS"
gc_run() { # ARGS: "seconds maxrss_kib"
	/usr/bin/time -f '%e %M' -o "$WORK/time" "$BIN" cache gc --storage "dir://$WORK/gc" --no-db "$@" >"$WORK/gc.out" || die "cache gc failed"
	tail -1 "$WORK/gc.out" >>"$RESULTS/gc.txt"
	cat "$WORK/time"
}
read -r GC_DRY_S GC_DRY_KIB < <(gc_run --dry-run)
read -r GC_S GC_KIB < <(gc_run)
log "cache gc of $((2 * GC_PATHS)) objects: dry run $GC_DRY_S s / $((GC_DRY_KIB / 1024)) MiB, real $GC_S s / $((GC_KIB / 1024)) MiB"

{
	echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo
	echo "| measure | ours | reference | ratio (target) |"
	echo "|---|---|---|---|"
	echo "| nix copy --to, $SMALL small + ${LARGE_MIB} MiB (best of $COPY_RUNS) | $OURS_BEST s (our cache, dir) | $FILE_BEST s (file://) | $(calc "$FILE_BEST / $OURS_BEST") (≥ 0.8) |"
	echo "| nix copy --to a null HTTP cache (the client's own cost) | $NULL_BEST s | $FILE_BEST s (file://) | $(calc "$FILE_BEST / $NULL_BEST") (the best any HTTP cache can do) |"
	echo "| nix copy --to our cache against the null cache | $OURS_BEST s | $NULL_BEST s | $(calc "$NULL_BEST / $OURS_BEST") |"
	echo "| nix copy --to a cache on S3 | $S3_UP_T s | $FILE_BEST s (file://) | $(calc "$FILE_BEST / $S3_UP_T") |"
	echo "| narinfo/s, one connection, warm | $S3_RATE (S3) | $LOCAL_RATE (local store) | $(calc "$S3_RATE / $LOCAL_RATE") (≥ 0.9) |"
	echo "| large NAR, one connection, NAR MiB/s | $S3_NAR (S3, zstd file; $S3_WIRE MiB/s on the wire) | $LOCAL_NAR (local store, uncompressed) | $(calc "$S3_NAR / $LOCAL_NAR") |"
	echo "| cache gc --dry-run, $((2 * GC_PATHS)) objects | $GC_DRY_S s, $((GC_DRY_KIB / 1024)) MiB peak | | |"
	echo "| cache gc, $((2 * GC_PATHS)) objects | $GC_S s, $((GC_KIB / 1024)) MiB peak | | |"
} | tee "$RESULTS/summary.md"
