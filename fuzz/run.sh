#!/usr/bin/env bash
# Run the cargo-fuzz targets. Usage: fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
# Default: 60 s for each target. cargo-fuzz needs nightly-only compiler flags; the stable
# toolchain accepts them with RUSTC_BOOTSTRAP=1. New corpus entries land in fuzz/corpus/,
# which the stable test suite replays (crates/iso8583/tests/fuzz_corpus.rs).
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decode_message parse_tlv load_spec)
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -max_len=4096
done
