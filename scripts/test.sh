#!/usr/bin/env bash
# Runs the whole understudy test suite on a fresh machine with only the Rust
# toolchain: installs what the tests need (and says so), then checks format
# and lints and runs every test. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step says how long the run has taken so far (minutes:seconds), so a
# CI log shows where the time goes.
say() { printf '==> [%d:%02d] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

if [ -x scripts/ensure-nats.sh ]; then
  # shellcheck disable=SC1091
  source scripts/ensure-nats.sh
fi
# shellcheck disable=SC1091
source scripts/ensure-schemathesis.sh
# shellcheck disable=SC1091
source scripts/ensure-debian.sh
ensure_debian "the dashboard browser test" /usr/bin/chromium /usr/bin/chromedriver -- chromium chromium-driver
ensure_debian "the metrics format checks" /usr/bin/promtool -- prometheus

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "the compose lab's container images (scripts/images.sh: built offline, cached after the first run)"
if docker info >/dev/null 2>&1; then
  ./scripts/images.sh
else
  say "no Docker daemon reachable: the container tests will say so (and fail when CI is set)"
fi

say "cargo test (unit, property, simulation and end-to-end tests)"
cargo test --workspace --locked

say "the election, project and gateway e2e suites again on a secured bus (TLS, least-privilege accounts: UNDERSTUDY_TEST_SECURE)"
# --workspace, as above: with `-p understudy` cargo resolves the crates'
# features for that package alone and builds them all again (54 s).
UNDERSTUDY_TEST_SECURE=1 cargo test --workspace --locked \
  --test election_e2e --test project_e2e --test gateway_e2e --test harness_selftest

say "a short coverage-guided fuzz run of every decoder of network input (scripts/fuzz-smoke.sh)"
./scripts/fuzz-smoke.sh

say "all checks passed"
