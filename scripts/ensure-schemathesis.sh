#!/usr/bin/env bash
# Makes schemathesis (the OpenAPI property-based tester) available for the
# gateway's schema test (tests/gateway_schema_e2e.rs), installing it from PyPI
# with pip into a project-local virtualenv, <repo>/.tools/venv, when needed.
#
# Source it (scripts/test.sh) or run it directly. Afterwards
#   UNDERSTUDY_SCHEMATHESIS=/abs/path/to/schemathesis   (exported)
#
# The version is pinned: the test's command line and the checks it names are
# those of this version (schemathesis 4 changed the CLI of 3.x).
#
# Order of preference:
#   1. $UNDERSTUDY_SCHEMATHESIS, if it is a schemathesis of the pinned version;
#   2. <repo>/.tools/venv/bin/schemathesis, if it is of the pinned version;
#   3. install schemathesis==PIN from PyPI with pip into <repo>/.tools/venv
#      (created with `python3 -m venv`).
#
# Needs no sudo and no stdin; safe under `set -euo pipefail`; idempotent.
# It does not change the caller's shell options.

_understudy_st_pin_version="4.32.5"

# Prints the version of the schemathesis whose console script is $1, or
# nothing. Asks the interpreter beside it for the installed distribution's
# version (faster and steadier than parsing `schemathesis --version`).
_understudy_st_version() {
  local bin="$1" py
  [ -n "$bin" ] && [ -f "$bin" ] && [ -x "$bin" ] || return 0
  py="$(dirname "$bin")/python"
  [ -x "$py" ] || return 0
  "$py" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' \
    2>/dev/null </dev/null || true
  return 0
}

# Succeeds when $1 is a schemathesis of the pinned version.
_understudy_st_is_pinned() {
  [ "$(_understudy_st_version "$1")" = "$_understudy_st_pin_version" ]
}

# Exports UNDERSTUDY_SCHEMATHESIS as the absolute path of $1.
_understudy_st_use() {
  local dir
  dir="$(cd "$(dirname "$1")" && pwd -P)" || return 1
  export UNDERSTUDY_SCHEMATHESIS="$dir/$(basename "$1")"
  printf '==> using schemathesis %s at %s\n' "$_understudy_st_pin_version" "$UNDERSTUDY_SCHEMATHESIS"
}

_understudy_ensure_schemathesis() {
  local repo venv pin candidate
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)" || return 1
  venv="$repo/.tools/venv"
  pin="$_understudy_st_pin_version"

  # 1. An explicit choice.
  candidate="${UNDERSTUDY_SCHEMATHESIS:-}"
  if [ -n "$candidate" ]; then
    if _understudy_st_is_pinned "$candidate"; then
      _understudy_st_use "$candidate"
      return
    fi
    printf 'note: ignoring UNDERSTUDY_SCHEMATHESIS=%s (not schemathesis %s in a virtualenv)\n' \
      "$candidate" "$pin" >&2
  fi

  # 2. Our own install.
  if _understudy_st_is_pinned "$venv/bin/schemathesis"; then
    _understudy_st_use "$venv/bin/schemathesis"
    return
  fi

  # 3. Install from PyPI into the project's virtualenv.
  printf '==> installing schemathesis %s from PyPI with pip into .tools/venv\n' "$pin"
  if ! command -v python3 >/dev/null 2>&1; then
    printf 'error: python3 (>= 3.9, with venv and pip) is needed to install schemathesis\n' >&2
    return 1
  fi
  if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$repo/.tools" || return 1
    if ! python3 -m venv "$venv" </dev/null; then
      printf 'error: python3 -m venv %s failed (on Debian: apt-get install python3-venv)\n' "$venv" >&2
      return 1
    fi
  fi
  if ! PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 "$venv/bin/python" -m pip install \
    --quiet "schemathesis==$pin" </dev/null; then
    printf 'error: pip could not install schemathesis==%s into %s\n' "$pin" "$venv" >&2
    return 1
  fi
  if ! _understudy_st_is_pinned "$venv/bin/schemathesis"; then
    printf 'error: after installing, %s is not schemathesis %s\n' "$venv/bin/schemathesis" "$pin" >&2
    return 1
  fi
  _understudy_st_use "$venv/bin/schemathesis"
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  # Sourced: report failure to the caller (its `set -e` stops it there).
  _understudy_st_rc=0
  _understudy_ensure_schemathesis || _understudy_st_rc=$?
  unset -f _understudy_st_version _understudy_st_is_pinned _understudy_st_use \
    _understudy_ensure_schemathesis
  unset _understudy_st_pin_version
  eval "unset _understudy_st_rc; return $_understudy_st_rc"
else
  set -euo pipefail
  _understudy_ensure_schemathesis
fi
