#!/usr/bin/env bash
# Where the switch's CPU goes per transaction, by part of the flow.
#   benches/profile/run.sh [durable|lean] [CONNECTIONS] [WINDOW] [SECONDS]
# Runs `switchyard sim issuer`, `switchyard run` (durable audit with integrity on, or
# fire-and-forget with integrity off) and `switchyard sim terminal` as processes on
# 127.0.0.1, warms up for a second, then measures for SECONDS: the switch's and the issuer
# simulator's CPU per transaction from /proc/PID/stat (utime + stime), and 3 s of
# `perf record` (Debian's linux-perf) of the switch, grouped by where.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=${1:-durable}; C=${2:-10}; W=${3:-8}; S=${4:-5}
case "$MODE" in
  durable) durability=durable; integrity=true ;;
  lean) durability=fire-and-forget; integrity=false ;;
  *) echo "mode: durable or lean" >&2; exit 64 ;;
esac
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)" >&2; exit 69; }
cargo build --release -q -p switchyard
BIN=target/release/switchyard
D=$(mktemp -d)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ip=$(port); sp=$(port); ap=$(port)
cleanup() { kill -TERM ${SP:-} ${IP:-} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
$BIN sim issuer --listen 127.0.0.1:$ip >/dev/null 2>&1 & IP=$!
cat > $D/switch.toml <<CFG
[admin]
listen = "127.0.0.1:$ap"
[log]
level = "warn"
[audit]
dir = "$D/audit"
durability = "$durability"
demo_keys = true
[integrity]
enabled = $integrity
saf_dir = "$D/saf"
[[listeners]]
name = "terminals"
listen = "127.0.0.1:$sp"
max_connections = 20000
max_connections_per_source = 20000
[[links]]
name = "issuer"
endpoints = ["127.0.0.1:$ip"]
connections = 2
max_in_flight = 4096
[routing]
default = "issuer"
CFG
$BIN run --config $D/switch.toml >/dev/null 2>$D/switch.err & SP=$!
for _ in $(seq 200); do
  curl -sf http://127.0.0.1:$ap/readyz >/dev/null 2>&1 && break
  sleep 0.05
done
target=127.0.0.1:$sp
$BIN sim terminal --target $target --connections $C --window $W --duration 1 >/dev/null 2>&1
cpu() { awk '{print $14 + $15}' /proc/$1/stat; }
i0=$(cpu $IP); s0=$(cpu $SP)
(sleep 1; timeout -s INT 3 perf record -q -F 1999 --call-graph=dwarf,16384 -p $SP -o $D/perf.data >/dev/null 2>&1 || true) &
PERF=$!
out=$($BIN sim terminal --target $target --connections $C --window $W --duration $S --json 2>/dev/null)
i1=$(cpu $IP); s1=$(cpu $SP)
wait $PERF || true
tps=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["throughput"])')
echo "$out" | python3 -c "
import json,sys; d=json.load(sys.stdin); n=max(d['answered'],1)
i=($i1-$i0)*1e4/n; s=($s1-$s0)*1e4/n
print('$MODE ${C} x ${W}: %.0f tx/s; CPU per transaction (/proc): switch %.1f µs, issuer simulator %.1f µs, ratio %.2f' % (d['throughput'], s, i, s/i if i else 0))"
perf script -i $D/perf.data 2>/dev/null > $D/perf.txt
python3 benches/profile/where.py $D/perf.txt "$tps" 3 1999
