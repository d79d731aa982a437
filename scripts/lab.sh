#!/usr/bin/env bash
# Runs a local lab group on this machine: a nats-server with JetStream, five
# devices with distinct scores, the control gateway and a Prometheus scraping
# them, elections and failovers shown live. Installs a current nats-server and
# Debian's prometheus first if needed (and says so). Extra arguments go to
# `understudy lab` (see `understudy lab --help`), e.g. --kill-every 10s.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source scripts/ensure-nats.sh
# shellcheck disable=SC1091
source scripts/ensure-debian.sh
ensure_debian "the lab's Prometheus" /usr/bin/prometheus -- prometheus ||
  echo "==> going on without Prometheus (the lab runs; its metrics endpoints are still there)"
echo "==> building understudy (release)"
cargo build --release --locked -p understudy
exec target/release/understudy lab "$@"
