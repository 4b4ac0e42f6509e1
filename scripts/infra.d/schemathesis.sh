# shellcheck shell=bash
# Schemathesis (PyPI), the property-based API fuzzer api/tests/fuzz_openapi.rs drives against the
# API's own /openapi.json. Nothing runs: "up" means the pinned version is installed in a venv under
# cache/schemathesis and its `st` command answers.
#
#   UMP_SCHEMATHESIS   the `st` command

SCHEMATHESIS_VERSION=4.32.5
# Its dependencies, pinned too: a new release of one of them cannot change a run.
SCHEMATHESIS_CONSTRAINTS="$(dirname "${BASH_SOURCE[0]}")/schemathesis-constraints.txt"

schemathesis__venv() { echo "$UMP_INFRA_CACHE/schemathesis/venv-$SCHEMATHESIS_VERSION"; }

schemathesis__stamp() { sha256sum "$SCHEMATHESIS_CONSTRAINTS" | cut -d' ' -f1; }

schemathesis__python() {
  # Debian's interpreter first: it is the one apt's python3-venv completes.
  if [ -x /usr/bin/python3 ]; then echo /usr/bin/python3; else command -v python3 || echo python3; fi
}

schemathesis_up() {
  local venv python
  schemathesis_status && return 0
  python=$(schemathesis__python)
  "$python" -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
  venv=$(schemathesis__venv)
  log "schemathesis: installing $SCHEMATHESIS_VERSION into $venv"
  # A venv's paths are baked into its scripts, so it is built where it lives; a half-built one
  # fails the status check (no `st` of the pinned version) and is rebuilt from scratch.
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv" || die "schemathesis: $python -m venv failed"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c "$SCHEMATHESIS_CONSTRAINTS" "schemathesis==$SCHEMATHESIS_VERSION" >"$venv.pip.log" 2>&1 \
    || { cat "$venv.pip.log" >&2; rm -rf "$venv"; die "schemathesis: pip install schemathesis==$SCHEMATHESIS_VERSION failed"; }
  schemathesis__stamp >"$venv/.constraints"
  schemathesis_status || die "schemathesis: $venv/bin/st does not report version $SCHEMATHESIS_VERSION"
}

schemathesis_down() { :; }

schemathesis_status() {
  local st
  st="$(schemathesis__venv)/bin/st"
  [ -x "$st" ] && [[ "$("$st" --version 2>/dev/null || true)" == *"$SCHEMATHESIS_VERSION"* ]] &&
    [ "$(cat "$(schemathesis__venv)/.constraints" 2>/dev/null || true)" = "$(schemathesis__stamp)" ]
}

schemathesis_env() { echo "UMP_SCHEMATHESIS=$(schemathesis__venv)/bin/st"; }
