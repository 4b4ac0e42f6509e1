# shellcheck shell=bash
# standardwebhooks (PyPI), the Standard Webhooks reference implementation in Python: the webhook
# tests verify every signature UMP sent with it, an implementation of the specification that
# shares no code with UMP's. Nothing runs: "up" means the pinned version is installed in a venv
# under cache/standardwebhooks and imports. It has no dependencies (the standard library only).
#
#   UMP_STANDARDWEBHOOKS_PYTHON   a python with `standardwebhooks` importable

STANDARDWEBHOOKS_VERSION=1.1.0

standardwebhooks__venv() { echo "$UMP_INFRA_CACHE/standardwebhooks/venv-$STANDARDWEBHOOKS_VERSION"; }

standardwebhooks__python() {
  # Debian's interpreter first: it is the one apt's python3-venv completes.
  if [ -x /usr/bin/python3 ]; then echo /usr/bin/python3; else command -v python3 || echo python3; fi
}

standardwebhooks_up() {
  local venv python
  standardwebhooks_status && return 0
  python=$(standardwebhooks__python)
  "$python" -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
  venv=$(standardwebhooks__venv)
  log "standardwebhooks: installing $STANDARDWEBHOOKS_VERSION into $venv"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv" || die "standardwebhooks: $python -m venv failed"
  # --no-deps: it has none, and a new release of anything else cannot change a run.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    "standardwebhooks==$STANDARDWEBHOOKS_VERSION" >"$venv.pip.log" 2>&1 \
    || { cat "$venv.pip.log" >&2; rm -rf "$venv"; die "standardwebhooks: pip install standardwebhooks==$STANDARDWEBHOOKS_VERSION failed"; }
  standardwebhooks_status || die "standardwebhooks: $venv cannot import version $STANDARDWEBHOOKS_VERSION"
}

standardwebhooks_down() { :; }

standardwebhooks_status() {
  local python
  python="$(standardwebhooks__venv)/bin/python"
  [ -x "$python" ] && [ "$("$python" -c 'import importlib.metadata as m; print(m.version("standardwebhooks"))' 2>/dev/null || true)" = "$STANDARDWEBHOOKS_VERSION" ]
}

standardwebhooks_env() { echo "UMP_STANDARDWEBHOOKS_PYTHON=$(standardwebhooks__venv)/bin/python"; }
