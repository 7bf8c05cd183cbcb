#!/usr/bin/env bash
# Where a group's CPU goes per transaction: two switches as one group on a nats-server
# (loadbench shape 5 with `shared`, shape 6 with `stream`), open loop.
#   benches/profile/group.sh [shared|stream] [RATE] [SECONDS]
# Starts `nats-server -js`, `switchyard sim issuer` and two durable switches with
# `[cluster]` on 127.0.0.1, sends RATE requests a second for SECONDS (half to each switch,
# 25 connections each, their own terminal ids) after a second of warm-up, and prints each
# process's CPU per transaction of the group from /proc/PID/stat (utime + stime), the
# broker's messages in and out per transaction (its /varz), the first switch's records
# per group commit, and 3 s
# of `perf record` (Debian's linux-perf) of the first switch, grouped by where.py
# (PERF_SCRIPT=FILE keeps the `perf script` text for a closer look).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=${1:-shared}; RATE=${2:-5000}; S=${3:-6}
case "$MODE" in
  shared) shared=true ;;
  stream) shared=false ;;
  *) echo "mode: shared or stream" >&2; exit 64 ;;
esac
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)" >&2; exit 69; }
NATS=$(command -v nats-server || ls /usr/sbin/nats-server 2>/dev/null) || { echo "needs nats-server" >&2; exit 69; }
cargo build --release -q -p switchyard
BIN=target/release/switchyard
D=$(mktemp -d)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
np=$(port); ip=$(port); mp=$(port)
PIDS=()
cleanup() { kill -TERM "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
"$NATS" -js -a 127.0.0.1 -p $np -m $mp -sd $D/nats >/dev/null 2>&1 & NP=$!; PIDS+=($NP)
$BIN sim issuer --listen 127.0.0.1:$ip >/dev/null 2>&1 & IP=$!; PIDS+=($IP)
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$np) 2>/dev/null && break; sleep 0.05; done
SW=(); TARGETS=(); ADMINS=()
for n in 0 1; do
  sp=$(port); ap=$(port)
  cat > $D/switch-$n.toml <<CFG
[admin]
listen = "127.0.0.1:$ap"
[log]
level = "warn"
[audit]
dir = "$D/data-$n/audit"
durability = "durable"
demo_keys = true
[integrity]
enabled = true
saf_dir = "$D/data-$n/saf"
[[listeners]]
name = "terminals"
listen = "127.0.0.1:$sp"
max_connections = 20000
max_connections_per_source = 20000
idle_timeout_ms = 600000
[[links]]
name = "issuer"
endpoints = ["127.0.0.1:$ip"]
connections = 2
max_in_flight = 4096
[routing]
default = "issuer"
[cluster]
servers = ["nats://127.0.0.1:$np"]
instance = "prof-$n"
shared_state = $shared
home_settle_s = 0
CFG
  $BIN run --config $D/switch-$n.toml >/dev/null 2>$D/switch-$n.err & SW+=($!); PIDS+=($!)
  for _ in $(seq 200); do curl -sf http://127.0.0.1:$ap/readyz >/dev/null 2>&1 && break; sleep 0.05; done
  TARGETS+=(127.0.0.1:$sp); ADMINS+=(127.0.0.1:$ap)
done
terminals() { # SECONDS RATE_EACH: both halves at once, their JSON reports in $D/load-*.json
  $BIN sim terminal --target ${TARGETS[0]} --connections 25 --first-terminal 1 --rate $2 --duration $1 --json >$D/load-0.json 2>/dev/null &
  local a=$!
  $BIN sim terminal --target ${TARGETS[1]} --connections 25 --first-terminal 26 --rate $2 --duration $1 --json >$D/load-1.json 2>/dev/null
  wait $a
}
half=$((RATE / 2))
terminals 1 $half
cpu() { awk '{print $14 + $15}' /proc/$1/stat; }
msgs() { curl -sf http://127.0.0.1:$mp/varz | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["in_msgs"], v["out_msgs"])'; }
c0=($(cpu ${SW[0]}) $(cpu ${SW[1]}) $(cpu $NP) $(cpu $IP) $(msgs))
(sleep 1; timeout -s INT 3 perf record -q -F 1999 --call-graph=dwarf,16384 -p ${SW[0]} -o $D/perf.data >/dev/null 2>&1 || true) &
PERF=$!
terminals $S $half
c1=($(cpu ${SW[0]}) $(cpu ${SW[1]}) $(cpu $NP) $(cpu $IP) $(msgs))
wait $PERF || true
# Records per group commit (whole run, switch 0): what shipping a commit's records as one
# stream message would save in messages.
curl -sf http://${ADMINS[0]}/metrics | awk '/^switchyard_audit_batch_records_sum/{s=$2} /^switchyard_audit_batch_records_count/{c=$2} END{if (c > 0) printf "switch 0: %.2f records per group commit (%d commits)\n", s/c, c}'
python3 - "$MODE" "$D" "${c0[@]}" "${c1[@]}" <<'PY'
import json, sys
mode, d = sys.argv[1], sys.argv[2]
c = [float(x) for x in sys.argv[3:]]; c0, c1 = c[:6], c[6:]
loads = [json.load(open(f'{d}/load-{n}.json')) for n in (0, 1)]
n = max(sum(l['answered'] for l in loads), 1)
tps = sum(l['throughput'] for l in loads)
per = [(b - a) * 1e4 / n for a, b in zip(c0[:4], c1[:4])]
msgs_in, msgs_out = ((c1[i] - c0[i]) / n for i in (4, 5))
print(f'{mode}: {tps:.0f} tx/s; CPU per transaction of the group (/proc): switch 0 {per[0]:.1f} µs, '
      f'switch 1 {per[1]:.1f} µs, nats-server {per[2]:.1f} µs, issuer simulator {per[3]:.1f} µs; '
      f'switches + broker {per[0] + per[1] + per[2]:.1f} µs; broker messages per transaction: '
      f'{msgs_in:.2f} in, {msgs_out:.2f} out')
open(f'{d}/tps', 'w').write(str(tps / 2))
PY
perf script -i $D/perf.data 2>/dev/null > $D/perf.txt
python3 benches/profile/where.py $D/perf.txt "$(cat $D/tps)" 3 1999
if [ -n "${PERF_SCRIPT:-}" ]; then cp $D/perf.txt "$PERF_SCRIPT"; fi
