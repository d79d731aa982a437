#!/usr/bin/env bash
# Makes Debian's Chromium and its WebDriver (chromedriver) available for the
# dashboard browser test (tests/dashboard_browser.rs), installing the
# `chromium` and `chromium-driver` packages with apt-get when
# /usr/bin/chromium or /usr/bin/chromedriver is missing.
#
# Source it (scripts/test.sh) or run it directly. It exports nothing and does
# not change the caller's shell options. Non-interactive; uses sudo only when
# not root and sudo exists. Idempotent: does nothing when both are present.
#
# Without them the browser test skips itself (and fails when CI is set).

_understudy_ensure_chromium() {
  local sudo=""
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    printf '==> using %s and %s\n' /usr/bin/chromium /usr/bin/chromedriver
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    printf 'error: /usr/bin/chromium or /usr/bin/chromedriver is missing and there is no apt-get to install them (packages chromium, chromium-driver)\n' >&2
    return 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo="sudo"
    else
      printf 'error: installing chromium needs root, and sudo is not available; run as root: apt-get install chromium chromium-driver\n' >&2
      return 1
    fi
  fi
  printf '==> installing Debian packages chromium and chromium-driver with apt-get%s (for the dashboard browser test)\n' \
    "${sudo:+ (via sudo)}"
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null; then
    printf 'error: apt-get update failed\n' >&2
    return 1
  fi
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    chromium chromium-driver </dev/null; then
    printf 'error: apt-get install chromium chromium-driver failed\n' >&2
    return 1
  fi
  if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    printf 'error: after installing, /usr/bin/chromium or /usr/bin/chromedriver is still missing\n' >&2
    return 1
  fi
  printf '==> installed %s\n' "$(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  # Sourced: report failure to the caller (its `set -e` stops it there).
  _understudy_chromium_rc=0
  _understudy_ensure_chromium || _understudy_chromium_rc=$?
  unset -f _understudy_ensure_chromium
  eval "unset _understudy_chromium_rc; return $_understudy_chromium_rc"
else
  set -euo pipefail
  _understudy_ensure_chromium
fi
