#!/usr/bin/env bash
# The load benchmark: direct vs through the switch (durable, fire-and-forget, TLS both
# sides), several scenarios, side by side in one run. Prints a markdown table.
#   benches/run.sh            full size (about 3 minutes on 2 cores)
#   benches/run.sh --smoke    a few seconds (the test suite runs this size too)
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p switchyard
cargo run --release -q -p switchyard-benches --example loadbench -- target/release/switchyard "$@"
