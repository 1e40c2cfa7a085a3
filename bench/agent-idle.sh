#!/usr/bin/env bash
# The agent's resident memory and CPU while idle: a server, one approved
# host, the agent heartbeating once at start and then waiting for its next
# interval (or a change of /run/current-system) for IDLE seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/crystal-forge}
IDLE=${IDLE:-60}
WORK=$(mktemp -d)
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters =\nsandbox = false'
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
API=$(free_port); CACHE=$(free_port)

PUB=$("$BIN" keygen --key-file "$WORK/agent-key" --name idlehost 2>/dev/null)
cat > "$WORK/forge.toml" <<TOML
bind = "127.0.0.1"
api_port = $API
cache_port = $CACHE
poll_interval = "0"
data_dir = "$WORK/data"
key_file = "$WORK/data/cache-key"
[[hosts]]
name = "idlehost"
public_key = "$PUB"
TOML
"$BIN" server --config "$WORK/forge.toml" >"$WORK/server.log" 2>&1 &
SERVER=$!
AGENT=
trap 'kill $SERVER $AGENT 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$API/health" >/dev/null && break; sleep 0.1; done
SKEY=$(curl -fs "http://127.0.0.1:$API/info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["public_key"])')

mkdir -p "$WORK/run"
"$BIN" agent --server "http://127.0.0.1:$API" --host idlehost --key-file "$WORK/agent-key" \
	--server-key "$SKEY" --current-system "$WORK/run/current-system" --profile "$WORK/profile" \
	--interval 15m >"$WORK/agent.log" 2>&1 &
AGENT=$!
sleep 3 # the first heartbeat
ticks() { awk '{print $14 + $15}' "/proc/$AGENT/stat"; }
t0=$(ticks)
sleep "$IDLE"
t1=$(ticks)
hz=$(getconf CLK_TCK)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$AGENT/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$AGENT/status")
echo "agent idle for ${IDLE}s after its first heartbeat:"
echo "  resident memory  $((rss / 1024)) MiB (peak $((hwm / 1024)) MiB)"
awk -v d="$((t1 - t0))" -v hz="$hz" -v s="$IDLE" 'BEGIN { printf "  CPU              %.2f s over %d s (%.3f%% of one core)\n", d/hz, s, 100*d/hz/s }'
seen=$(curl -fs "http://127.0.0.1:$API/api/v1/hosts/idlehost" | python3 -c 'import json,sys; h=json.load(sys.stdin); print(h["last_seen"] or "never")')
echo "  the server last heard from it at $seen"
[ "$seen" != never ] || { echo "agent-idle: the agent never reached the server" >&2; cat "$WORK/agent.log" >&2; exit 1; }
