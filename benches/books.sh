#!/usr/bin/env bash
# The books benchmark: a day of RECORDS (default 1,000,000) approved transactions in an
# audit log, reconciled against the issuer's settlement file of the same transactions, and
# settled; wall time and peak memory (maximum resident set size) of each command, against
# the goals of a day under a minute and memory bounded by a constant (under 128 MiB: one
# audit segment, one partition, the partitions' buffers), whatever the day's size.
#   benches/books.sh [RECORDS]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
dir=target/books-day
cargo build --release -q -p switchyard
cargo build --release -q -p switchyard-benches --example books_day
target/release/examples/books_day "$n" "$dir"
for cmd in reconcile settle; do
  extra=()
  [ "$cmd" = reconcile ] && extra=(--against "$dir/settlement.csv")
  /usr/bin/time -f "%e %M" -o "$dir/$cmd.time" \
    target/release/switchyard audit "$cmd" --dir "$dir/audit" --demo-keys --business-date 20261203 \
    "${extra[@]}" --format csv > "$dir/$cmd.out" || { echo "$cmd failed: $(tail -3 "$dir/$cmd.out")"; exit 1; }
  read -r secs kib < "$dir/$cmd.time"
  verdict=$(awk -v s="$secs" 'BEGIN { print (s < 60) ? "met" : "NOT met" }')
  memory=$(awk -v k="$kib" 'BEGIN { print (k < 131072) ? "met" : "NOT met" }')
  printf '%-9s %8d records  %6.1f s  %7.1f MiB peak  (goals: under 60 s: %s; under 128 MiB: %s)\n' "$cmd" "$n" "$secs" "$(awk -v k="$kib" 'BEGIN{print k/1024}')" "$verdict" "$memory"
done
