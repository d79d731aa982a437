#!/usr/bin/env bash
# Makes programs from Debian's packages available for the test suite,
# installing the packages with apt-get when a program is missing.
#
#   source scripts/ensure-debian.sh
#   ensure_debian "the dashboard browser test" /usr/bin/chromium /usr/bin/chromedriver -- chromium chromium-driver
#
# Says what it uses or installs. Non-interactive; uses sudo only when not
# root and sudo exists. Idempotent: does nothing when every program is there.
# Returns non-zero (the caller's `set -e` stops it) when it cannot install.

ensure_debian() {
  local why="$1" sudo="" missing="" p
  shift
  local programs=()
  while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do programs+=("$1"); shift; done
  shift
  local packages=("$@")
  for p in "${programs[@]}"; do [ -x "$p" ] || missing="$missing $p"; done
  if [ -z "$missing" ]; then
    printf '==> using %s\n' "${programs[*]}"
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    printf 'error:%s missing and there is no apt-get to install it (Debian packages: %s)\n' "$missing" "${packages[*]}" >&2
    return 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo="sudo"
    else
      printf 'error: installing %s needs root, and sudo is not available; run as root: apt-get install %s\n' "${packages[*]}" "${packages[*]}" >&2
      return 1
    fi
  fi
  printf '==> installing Debian packages %s with apt-get%s (for %s)\n' "${packages[*]}" "${sudo:+ (via sudo)}" "$why"
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null; then
    printf 'error: apt-get update failed\n' >&2
    return 1
  fi
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${packages[@]}" </dev/null; then
    printf 'error: apt-get install %s failed\n' "${packages[*]}" >&2
    return 1
  fi
  for p in "${programs[@]}"; do
    if [ ! -x "$p" ]; then
      printf 'error: after installing %s, %s is still missing\n' "${packages[*]}" "$p" >&2
      return 1
    fi
  done
  printf '==> installed %s\n' "${packages[*]}"
}
