# shellcheck shell=bash
# Helpers shared by the infra components whose programs are compiled from Go sources (kube, helm,
# smtp); sourced by their scripts/infra.d/*.sh after lib.sh. Only the Go module proxy is reachable
# from CI (no release downloads), so these binaries are built here; Go's own caches (~/go/pkg/mod,
# ~/.cache/go-build) stay outside the clone, and a stamp next to each binary skips the build when
# the pinned version is already there.

# shellcheck disable=SC2034 # used by the component files
GO_INFRA_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# go__cmd ARGS...: run go, also from shells where /usr/local/go/bin is not on PATH.
# CGO off: static binaries and no C toolchain needed. -buildvcs=false: the wrapper modules sit in
# our clone, whose git state says nothing about the upstream code (and git may refuse a clone owned
# by another user). GOWORK=off: a go.work of the caller must not change what gets built.
go__cmd() {
  local go
  go=$(command -v go 2>/dev/null || true)
  [ -n "$go" ] || go=/usr/local/go/bin/go
  [ -x "$go" ] || die "Go is not installed (need go >= 1.26 on PATH or in /usr/local/go/bin)"
  CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOWORK=off "$go" "$@"
}

# go__stamp_ok NAME WANT: true when $UMP_INFRA_BIN/NAME exists and was built from WANT
# (for go__install_pinned: "PACKAGE@VERSION LDFLAGS").
go__stamp_ok() {
  [ -x "$UMP_INFRA_BIN/$1" ] && [ "$(cat "$UMP_INFRA_BIN/.$1.stamp" 2>/dev/null || true)" = "$2" ]
}

# go__install_pinned NAME PACKAGE@VERSION LDFLAGS: `go install` one upstream command (a module
# without replace directives) into $UMP_INFRA_BIN/NAME, unless that exact build is already there.
# Built into a temporary GOBIN and moved into place, so an interrupted build never leaves a
# half-written binary behind a valid stamp.
go__install_pinned() {
  local name=$1 pkg=$2 ldflags=$3 want tmp start=$SECONDS
  want="$pkg $ldflags"
  go__stamp_ok "$name" "$want" && return 0
  log "$name: building $pkg from the Go module proxy (first run only)"
  tmp=$(mktemp -d "$UMP_INFRA_CACHE/go-install.XXXXXX")
  # From an empty directory: `go install pkg@version` must not see any go.mod around it.
  if ! (cd "$tmp" && GOBIN="$tmp/bin" go__cmd install -trimpath -ldflags "$ldflags" "$pkg"); then
    rm -rf "$tmp"
    die "$name: go install $pkg failed"
  fi
  mv -f "$tmp/bin/$(basename "${pkg%@*}")" "$UMP_INFRA_BIN/$name"
  rm -rf "$tmp"
  echo "$want" >"$UMP_INFRA_BIN/.$name.stamp"
  log "$name: built in $((SECONDS - start))s"
}

# tls__ca DIR CN: a private CA in DIR/ca.{crt,key}, created once. Tests trust this CA rather than
# a self-signed leaf: every TLS stack (rustls/webpki included) accepts that, while a self-signed
# server certificate used as its own trust anchor is rejected by some of them.
tls__ca() {
  local dir=$1 cn=$2
  [ -s "$dir/ca.crt" ] && [ -s "$dir/ca.key" ] && return 0
  command -v openssl >/dev/null 2>&1 || apt_install openssl
  mkdir -p "$dir"
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 3650 \
    -subj "/CN=$cn" -keyout "$dir/ca.key.tmp" -out "$dir/ca.crt.tmp" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null || die "openssl: cannot create the CA in $dir"
  chmod 600 "$dir/ca.key.tmp"
  mv -f "$dir/ca.key.tmp" "$dir/ca.key"
  mv -f "$dir/ca.crt.tmp" "$dir/ca.crt"
}

# tls__cert DIR NAME SUBJECT EXTENSIONS...: DIR/NAME.{crt,key} signed by DIR/ca, created once.
# EXTENSIONS are openssl x509v3 config lines (e.g. "subjectAltName=IP:127.0.0.1").
tls__cert() {
  local dir=$1 name=$2 subj=$3
  shift 3
  [ -s "$dir/$name.crt" ] && [ -s "$dir/$name.key" ] && return 0
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "$@" >"$dir/$name.ext"
  if ! openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj "$subj" \
    -keyout "$dir/$name.key.tmp" -out "$dir/$name.csr" 2>/dev/null ||
    ! openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
      -set_serial "0x$(openssl rand -hex 16)" -days 3650 -extfile "$dir/$name.ext" \
      -out "$dir/$name.crt.tmp" 2>/dev/null; then
    die "openssl: cannot issue $dir/$name.crt"
  fi
  chmod 600 "$dir/$name.key.tmp"
  mv -f "$dir/$name.key.tmp" "$dir/$name.key"
  mv -f "$dir/$name.crt.tmp" "$dir/$name.crt"
  rm -f "$dir/$name.csr" "$dir/$name.ext"
}
