#!/usr/bin/env bash
# The cluster benchmark: the latency the group's shared state adds. One switch alone and
# one with [cluster] (the audit stream and the shared duplicate window and reversal index
# on a local nats-server with JetStream), each with its built-in simulated issuer, the same
# open-loop load on each in turn, three rounds side by side; prints each run's p50 and p99
# and the p99 difference; and, read from the clustered switch's own histogram over the same
# runs, the time of the claim each request waits for (goal: p99 under 0.5 ms on loopback).
#   benches/cluster.sh [RATE] [SECONDS]     (defaults 1000/s, 10 s a run)
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-1000}
secs=${2:-10}
cargo build --release -q -p switchyard
bin=target/release/switchyard
nats=$(command -v nats-server || echo /usr/sbin/nats-server)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
np=$(port)
"$nats" -js -a 127.0.0.1 -p "$np" -sd "$work/nats" >/dev/null 2>&1 &
for side in alone cluster; do
  t=$(port); a=$(port)
  mkdir -p "$work/$side"
  {
    printf '[admin]\nlisten = "127.0.0.1:%s"\n[audit]\ndir = "%s/%s/audit"\ndemo_keys = true\n' "$a" "$work" "$side"
    printf '[[listeners]]\nname = "terminals"\nlisten = "127.0.0.1:%s"\n' "$t"
    printf '[[links]]\nname = "issuer"\nsimulated = true\n[[routes]]\nname = "all"\nbins = ["4"]\nlink = "issuer"\n'
    [ "$side" = cluster ] && printf '[cluster]\nservers = ["nats://127.0.0.1:%s"]\ninstance = "bench-0"\n' "$np"
  } > "$work/$side/switchyard.toml"
  "$bin" run --config "$work/$side/switchyard.toml" 2>"$work/$side/log" &
  echo "$t" > "$work/$side/port"
  echo "$a" > "$work/$side/admin"
done
sleep 2
p99() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["latency_ms"]["p50"], r["latency_ms"]["p99"], r["sent"], r["answered"])' "$1"; }
printf '%-8s %-8s %10s %10s %8s\n' round side p50_ms p99_ms answered
for round in 1 2 3; do
  for side in alone cluster; do
    "$bin" sim terminal --target "127.0.0.1:$(cat "$work/$side/port")" --connections 4 \
      --rate "$rate" --duration "$secs" --json > "$work/$side/r$round.json"
    read -r p50 p99v sent answered < <(p99 "$work/$side/r$round.json")
    printf '%-8s %-8s %10s %10s %8s\n' "$round" "$side" "$p50" "$p99v" "$answered/$sent"
    echo "$p99v" >> "$work/$side/p99s"
  done
done
python3 - "$work" "$(cat "$work/cluster/admin")" <<'PY'
import sys, statistics, urllib.request
w, admin = sys.argv[1], sys.argv[2]
scrape = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
buckets = []
for line in scrape.splitlines():
    if line.startswith('switchyard_shared_state_duration_seconds_bucket{') and 'op="claim"' in line:
        le = line.split('le="')[1].split('"')[0]
        buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
buckets.sort()
total = buckets[-1][1] if buckets else 0
def quantile(q):
    prev_le, prev_n = 0.0, 0.0
    for le, n in buckets:
        if n >= q * total:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((q * total - prev_n) / max(n - prev_n, 1))
        prev_le, prev_n = le, n
    return float("nan")
if total:
    p99c = quantile(0.99) * 1000
    print(f"claims: {int(total)}, p50 {quantile(0.5)*1000:.3f} ms, p99 {p99c:.3f} ms (interpolated in the histogram's buckets; goal: p99 under 0.5 ms: {'met' if p99c < 0.5 else 'NOT met'})")
alone = [float(x) for x in open(f"{w}/alone/p99s")]
cluster = [float(x) for x in open(f"{w}/cluster/p99s")]
d = statistics.median(cluster) - statistics.median(alone)
print(f"median p99: alone {statistics.median(alone):.3f} ms, cluster {statistics.median(cluster):.3f} ms, added {d:.3f} ms (goal: under 0.5 ms: {'met' if d < 0.5 else 'NOT met'})")
PY
