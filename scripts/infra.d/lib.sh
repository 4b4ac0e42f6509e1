# shellcheck shell=bash
# Shared helpers for scripts/infra and its components (sourced, never run).
#
# Layout under $UMP_INFRA_HOME:
#   cache/<component>/   downloads and builds (kept across runs and clones)
#   bin/                 built binaries (kube-apiserver, etcd, helm, ...)
#   run/<component>/     pid file, log, data directory
#   run/infra.env        settings for the tests

export UMP_INFRA_HOME=${UMP_INFRA_HOME:-$HOME/.cache/ump-infra}
UMP_INFRA_CACHE=$UMP_INFRA_HOME/cache
UMP_INFRA_BIN=$UMP_INFRA_HOME/bin
UMP_INFRA_RUN=$UMP_INFRA_HOME/run
UMP_INFRA_ENV=$UMP_INFRA_RUN/infra.env
mkdir -p "$UMP_INFRA_CACHE" "$UMP_INFRA_BIN" "$UMP_INFRA_RUN"

log() { printf '[infra %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf '[infra] ERROR: %s\n' "$*" >&2; exit 1; }

# run_dir NAME -> prints (and creates) the runtime folder of a component.
run_dir() { mkdir -p "$UMP_INFRA_RUN/$1" && echo "$UMP_INFRA_RUN/$1"; }

# pid_alive NAME: true when the pid file of NAME names a live process that is still ours
# (the pid's command line mentions the marker recorded beside it).
pid_alive() {
  local dir=$UMP_INFRA_RUN/$1 pid marker
  [ -f "$dir/pid" ] || return 1
  pid=$(cat "$dir/pid")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  marker=$(cat "$dir/marker" 2>/dev/null || true)
  [ -z "$marker" ] && return 0
  cmdline_has "$pid" "$marker"
}

# cmdline_has PID TEXT: whether the command line of PID contains TEXT. No pipe into `grep -q`:
# under pipefail, grep quitting early SIGPIPEs the writer and a match would read as a miss.
cmdline_has() {
  local cmdline
  cmdline=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$2"* ]]
}

# start_daemon NAME MARKER CMD...: start CMD detached, output to run/NAME/log, pid to run/NAME/pid.
# MARKER is a string of the command line used to recognise the process later.
start_daemon() {
  local name=$1 marker=$2 dir
  shift 2
  dir=$(run_dir "$name")
  echo "$marker" >"$dir/marker"
  : >"$dir/log"
  # The daemon inherits no descriptor but its log: one opened by the caller (a `flock` held
  # around `scripts/infra up`, a pipe a test reads to its end) would otherwise live as long as it.
  (
    for fd in "/proc/$BASHPID/fd"/*; do
      fd=${fd##*/}
      if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    exec setsid nohup "$@" >>"$dir/log" 2>&1 </dev/null
  ) &
  local pid=$! i
  echo "$pid" >"$dir/pid"
  # Until the child has exec'd, its command line is this script's and pid_alive would call it a
  # stranger: return only once the daemon is really running (or already gone).
  for ((i = 0; i < 100; i++)); do
    cmdline_has "$pid" "$marker" && return 0
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.05
  done
}

# stop_daemon NAME: TERM the process from the pid file, KILL after 30 s; no-op when not running.
stop_daemon() {
  local name=$1 dir=$UMP_INFRA_RUN/$1 pid i
  if ! pid_alive "$name"; then rm -f "$dir/pid"; return 0; fi
  pid=$(cat "$dir/pid")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name: still running after 30 s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/pid"
}

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port NAME PORT [TIMEOUT_S]: wait until 127.0.0.1:PORT accepts; fail with the log tail if the
# daemon dies or the time runs out.
wait_port() {
  local name=$1 port=$2 timeout=${3:-120} i
  for ((i = 0; i < timeout * 5; i++)); do
    port_open "$port" && return 0
    # The pid was written by this start, so it is ours: only whether it still runs matters (its
    # command line may not show the daemon's yet while it is still exec'ing, under load).
    if [ -f "$UMP_INFRA_RUN/$name/pid" ] && ! kill -0 "$(cat "$UMP_INFRA_RUN/$name/pid")" 2>/dev/null; then
      tail -n 40 "$UMP_INFRA_RUN/$name/log" >&2 || true
      die "$name exited before 127.0.0.1:$port opened (log: $UMP_INFRA_RUN/$name/log)"
    fi
    sleep 0.2
  done
  tail -n 40 "$UMP_INFRA_RUN/$name/log" >&2 || true
  die "$name: 127.0.0.1:$port not open after ${timeout}s (log: $UMP_INFRA_RUN/$name/log)"
}

# ensure_port_free NAME PORT: refuse to start when a process that is not ours holds the port.
ensure_port_free() {
  if port_open "$2"; then
    die "$1: 127.0.0.1:$2 is already taken by a process scripts/infra did not start; stop it or free the port"
  fi
}

# apt_install PKG...: install the Debian packages that are missing, without starting their services.
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt: installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # Packages must not start daemons (there is no systemd here, and we start our own on 127.0.0.1).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
  fi
  if [ ! -f "$UMP_INFRA_CACHE/.apt-updated" ] || [ -n "$(find "$UMP_INFRA_CACHE/.apt-updated" -mmin +720)" ]; then
    $sudo apt-get update -qq
    touch "$UMP_INFRA_CACHE/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } \
    || die "apt-get install ${missing[*]} failed"
}

# build_tools: what compiling UMP needs on Debian (librdkafka is built from source with cmake,
# with TLS and SASL/SCRAM, so it needs these headers).
build_tools() {
  apt_install build-essential cmake pkg-config libssl-dev libcurl4-openssl-dev zlib1g-dev
  command -v cargo >/dev/null || die "cargo not found: install Rust with rustup first"
}

# cargo_build ARGS...: `cargo build ARGS` with the build tools installed first; prints the last
# line when it works, and the end of the compiler's output when it does not.
cargo_build() {
  build_tools
  local out
  out=$(mktemp)
  if cargo build "$@" >"$out" 2>&1; then
    tail -n 1 "$out"
    rm -f "$out"
  else
    tail -n 40 "$out" >&2
    rm -f "$out"
    die "cargo build $* failed (the end of its output is above)"
  fi
}

# java17: the JVM every Java component runs on (the machine's Java 17).
java17() {
  if [ -x /usr/lib/jvm/java-17-openjdk-amd64/bin/java ]; then echo /usr/lib/jvm/java-17-openjdk-amd64/bin/java; else echo java; fi
}

# maven_fetch NAME POM LIBS: copy POM's runtime dependencies into the cached folder LIBS. A stamp holds
# the pom's checksum, so an edited pom (new pin, extra jar) refreshes the folder while an unchanged one
# costs nothing.
maven_fetch() {
  local name=$1 pom=$2 libs=$3 want tmp
  want=$(sha256sum "$pom" | cut -d' ' -f1)
  [ "$(cat "$libs/.stamp" 2>/dev/null || true)" = "$want" ] && return 0
  command -v mvn >/dev/null || apt_install maven
  [ -x "$(java17)" ] || command -v java >/dev/null || apt_install openjdk-17-jre-headless
  log "$name: fetching jars through Maven ($pom)"
  tmp="$libs.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$(dirname "$libs")"
  # mvn prints colour codes even with -q; keep its output out of the way unless it fails.
  mvn -B -q -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" >"$libs.mvn.log" 2>&1 \
    || { cat "$libs.mvn.log" >&2; die "$name: mvn dependency:copy-dependencies failed"; }
  echo "$want" >"$tmp/.stamp"
  rm -rf "$libs"
  mv "$tmp" "$libs"
}
