# shellcheck shell=bash
# Redis on 127.0.0.1:6379 (Debian's redis-server, started directly: there is no systemd).
# Persistence is on (AOF) so data survives a down/up, as the fault-injection tests expect.

REDIS_PORT=6379

redis__cli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

redis_up() {
  redis_status && return 0
  local dir i
  apt_install redis-server redis-tools
  dir=$(run_dir redis)
  if ! pid_alive redis; then
    ensure_port_free redis "$REDIS_PORT"
    mkdir -p "$dir/data"
    # Rewritten on every start (cheap) so edits here apply after a down/up.
    cat >"$dir/redis.conf" <<EOF
# written by scripts/infra.d/redis.sh; changes are overwritten on the next start
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize no
# Log to stdout, which start_daemon sends to run/redis/log.
logfile ""
dir $dir/data
appendonly yes
appendfsync everysec
# AOF is the persistence; no RDB snapshots besides (by default one every minute under load: a
# forked child that takes most of a core for a second or two and writes the whole dataset, which
# on this shared machine showed as stalls of up to 130 ms in the realtime benchmark).
save ""
# An AOF rewrite writes its base in RDB form; LZF-compressing each value there took a quarter of the
# rewrite's CPU (4.3 s → 3.2 s of a core for 1.5 million dedupe keys) for 2 % of file size: the
# values are ids and hashes, which do not compress.
rdbcompression no
# Keep the command line as started: pid_alive recognises the process by this file's path in it.
set-proc-title no
EOF
    start_daemon redis "$dir/redis.conf" redis-server "$dir/redis.conf"
  fi
  wait_port redis "$REDIS_PORT" 60
  # The port opens before the AOF is loaded; until then commands answer "-LOADING".
  for ((i = 0; i < 300; i++)); do
    [ "$(redis__cli ping 2>/dev/null || true)" = "PONG" ] && return 0
    pid_alive redis || { tail -n 40 "$dir/log" >&2; die "redis exited during startup (log: $dir/log)"; }
    sleep 0.2
  done
  die "redis: no PONG after 60 s (log: $dir/log)"
}

redis_down() { stop_daemon redis; }

redis_status() { pid_alive redis && port_open "$REDIS_PORT"; }

redis_env() { echo "UMP_REDIS_URL=redis://127.0.0.1:$REDIS_PORT"; }
