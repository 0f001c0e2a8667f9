#!/usr/bin/env bash
# Runs every fuzz target for N seconds each (default 300) and prints, per
# target, libFuzzer's executions, coverage (cov/ft of its last stats line)
# and the crashes it wrote to artifacts/<target>/.
#
#   fuzz/run.sh [seconds-per-target] [target...]
#
# (all targets unless some are named).
#
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain take them. Each target starts from its seeds in corpus/<target>
# (kept small, in the repository) plus what earlier runs found in
# work/<target> (not kept); new inputs go to work/<target> only.
#
# FUZZ_SANITIZER picks cargo-fuzz's sanitizer: `none` by default, since the
# targets are safe Rust and an AddressSanitizer build of the daemon's
# dependencies takes about twice as long on the small CI machines; set
# FUZZ_SANITIZER=address for a run that also checks the unsafe code in them.
#
# Exits non-zero if any target crashed (or failed to build).
set -uo pipefail
cd "$(dirname "$0")"

seconds="${1:-300}"
sanitizer="${FUZZ_SANITIZER:-none}"
export RUSTC_BOOTSTRAP=1
targets=(update webhook_body markdown split image_probe sse config pdf_wrap)
if [ "$#" -gt 1 ]; then
  targets=("${@:2}")
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
  exit 2
fi

build_start=$(date +%s)
if ! cargo fuzz build --sanitizer "$sanitizer"; then
  echo "the fuzz targets did not build" >&2
  exit 1
fi
echo "built the fuzz targets in $(($(date +%s) - build_start)) s"

mkdir -p logs
failed=0
summary=()
for target in "${targets[@]}"; do
  mkdir -p "work/$target" "artifacts/$target" "corpus/$target"
  before=$(find "artifacts/$target" -type f | wc -l)
  log="logs/$target.log"
  cargo fuzz run --sanitizer "$sanitizer" "$target" "work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    >"$log" 2>&1
  status=$?
  after=$(find "artifacts/$target" -type f | wc -l)
  crashes=$((after - before))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | grep -E 'cov: [0-9]+' | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corpus=$(find "work/$target" -type f | wc -l)
  if [ "$status" -ne 0 ]; then
    failed=1
    echo "== $target FAILED (exit $status); the end of $log:" >&2
    tail -30 "$log" >&2
  fi
  line=$(printf '%-13s execs %-10s cov %-6s ft %-7s corpus %-6s crashes %s' \
    "$target" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$corpus" "$crashes")
  echo "$line"
  summary+=("$line")
done

echo
echo "fuzzing: ${seconds} s per target, sanitizer ${sanitizer}, $(date -u +%Y-%m-%d)"
printf '%s\n' "${summary[@]}"
exit "$failed"
