#!/usr/bin/env bash
# A short coverage-guided fuzz run of every decoder of network input
# (fuzz/README.md): installs cargo-fuzz if missing (and says so), builds the
# targets, then runs each from its checked-in seeds for a bounded time.
# Fails on any crash (a panic, a failed round-trip), leaving the input in
# fuzz/target/smoke/artifacts/<target>/.
#
#   scripts/fuzz-smoke.sh            # every target, FUZZ_SECONDS (5) each
#   FUZZ_SECONDS=60 scripts/fuzz-smoke.sh bus_message
#
# Works on the stable toolchain with `-s none` (no AddressSanitizer, which
# needs nightly; the workspace's crates forbid `unsafe`, and a panic is caught
# without it). It builds unoptimised (`-D`, with debug assertions and
# overflow checks): a cold build is then about half the CPU time of the
# optimised one the long runs use. The corpus it grows is kept in
# fuzz/target/smoke/ (ignored by git); the seeds in fuzz/seeds/ are only read.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

CARGO_FUZZ_VERSION=0.13.2
root="$PWD/.tools/cargo"
export PATH="$root/bin:$PATH"
if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
  say "installing cargo-fuzz $CARGO_FUZZ_VERSION into .tools/cargo (the fuzz smoke run needs it)"
  # --debug: cargo-fuzz only drives cargo and libFuzzer; its unoptimised
  # build takes about half the time of the optimised one.
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --debug --root "$root"
fi

seconds="${FUZZ_SECONDS:-5}"
cd fuzz
# The same flags for the build and the runs, so the runs reuse the build.
flags=(-D -s none)

say "cargo fuzz build (unoptimised, debug assertions and overflow checks on)"
cargo fuzz build "${flags[@]}"

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi
for target in "${targets[@]}"; do
  corpus="target/smoke/corpus/$target"
  artifacts="target/smoke/artifacts/$target"
  mkdir -p "$corpus" "$artifacts"
  args=(-max_total_time="$seconds" -artifact_prefix="$artifacts/" -print_final_stats=1)
  if [ "$target" != project_grpc ]; then
    args+=(-dict=dict/json.dict)
  fi
  if [ "$target" = gateway_tcp_line ]; then
    # Longer than the 16 KiB line limit, so the skip of an over-long line is reached.
    args+=(-max_len=20000)
  fi
  say "fuzzing $target for ${seconds}s"
  # New inputs go to the first corpus folder; the seeds are only read.
  log="target/smoke/$target.log"
  status=0
  cargo fuzz run "${flags[@]}" "$target" "$corpus" "seeds/$target" -- "${args[@]}" >"$log" 2>&1 ||
    status=$?
  grep -E '^(Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 40 "$log"
    say "FAILED: $target crashed (exit $status); the input is in fuzz/$artifacts/"
    exit 1
  fi
done
say "fuzz smoke: ${#targets[@]} targets, no crash"
