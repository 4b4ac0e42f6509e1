# shellcheck shell=bash
# MariaDB on 127.0.0.1:3306 (Debian's mariadb-server, started directly: there is no systemd).
#
# Our own my.cnf (--defaults-file) keeps /etc/mysql out of the picture. root authenticates by
# unix_socket on run/mariadb/mysqld.sock only; the tests use ump/ump over TCP. The data directory
# (run/mariadb/data) survives down/up.

MARIADB_PORT=3306

mariadb__dir() { echo "$UMP_INFRA_RUN/mariadb"; }

mariadb__write_config() {
  local dir=$1
  cat >"$dir/my.cnf" <<EOF
# written by scripts/infra.d/mariadb.sh; changes are overwritten on the next start
[client]
socket = $dir/mysqld.sock

[mariadbd]
# Root runs everything on this box and the data directory lives under root's home.
user = root
datadir = $dir/data
tmpdir = $dir/tmp
socket = $dir/mysqld.sock
pid-file = $dir/mariadbd.pid
bind-address = 127.0.0.1
port = $MARIADB_PORT
skip-name-resolve
# Level 2 (the default) logs an "Aborted connection" line for every port probe of scripts/infra.
log_warnings = 1
# No log-error: errors go to stderr, which start_daemon sends to run/mariadb/log.
character-set-server = utf8mb4
collation-server = utf8mb4_general_ci
max_connections = 300
# Small box, but durability stays real (flush at every commit, the default).
innodb_buffer_pool_size = 256M
innodb_log_file_size = 128M
innodb_flush_log_at_trx_commit = 1
performance_schema = OFF
EOF
}

mariadb_up() {
  # "provisioned" is written last, so an up that was interrupted after the start gets finished.
  mariadb_status && [ -f "$(mariadb__dir)/provisioned" ] && return 0
  local dir i
  apt_install mariadb-server mariadb-client
  dir=$(run_dir mariadb)
  if ! pid_alive mariadb; then
    ensure_port_free mariadb "$MARIADB_PORT"
    rm -f "$dir/provisioned"
    mkdir -p "$dir/tmp"
    mariadb__write_config "$dir"
    if [ ! -d "$dir/data/mysql" ]; then
      log "mariadb: initialising a data directory in $dir/data"
      # Into a scratch folder first, so an interrupted initialisation is redone rather than reused.
      rm -rf "$dir/data.init"
      mariadb-install-db --defaults-file="$dir/my.cnf" --datadir="$dir/data.init" --skip-test-db \
        >"$dir/install-db.log" 2>&1 || { cat "$dir/install-db.log" >&2; die "mariadb: mariadb-install-db failed"; }
      mv "$dir/data.init" "$dir/data"
    fi
    # The marker names our my.cnf so pid_alive never mistakes another server for ours.
    start_daemon mariadb "--defaults-file=$dir/my.cnf" /usr/sbin/mariadbd --defaults-file="$dir/my.cnf"
  fi
  wait_port mariadb "$MARIADB_PORT" 120
  # Ready means root gets an answer over the socket (before provisioning no account may log in
  # over TCP, and mariadb-admin counts "host not allowed" as a failed ping).
  for ((i = 0; i < 300; i++)); do
    mariadb-admin --defaults-file="$dir/my.cnf" --user=root ping >/dev/null 2>&1 && break
    pid_alive mariadb || { tail -n 40 "$dir/log" >&2; die "mariadb exited during startup (log: $dir/log)"; }
    sleep 0.2
  done
  ((i < 300)) || die "mariadb: no answer to ping after 60 s (log: $dir/log)"
  # As root over the socket (unix_socket auth). Idempotent, and cheap enough to run at every start.
  # ump gets global rights: the tests create and drop throwaway databases.
  mariadb --defaults-file="$dir/my.cnf" --user=root <<'EOF' || die "mariadb: creating database/user ump failed (log: $dir/log)"
CREATE DATABASE IF NOT EXISTS ump;
CREATE USER IF NOT EXISTS 'ump'@'127.0.0.1' IDENTIFIED BY 'ump';
CREATE USER IF NOT EXISTS 'ump'@'localhost' IDENTIFIED BY 'ump';
GRANT ALL PRIVILEGES ON *.* TO 'ump'@'127.0.0.1';
GRANT ALL PRIVILEGES ON *.* TO 'ump'@'localhost';
EOF
  # What the tests will do: log in as ump over TCP.
  mariadb-admin --no-defaults --protocol=tcp -h 127.0.0.1 -P "$MARIADB_PORT" -u ump -pump ping >/dev/null \
    || die "mariadb: ump cannot log in over TCP (log: $dir/log)"
  touch "$dir/provisioned"
}

mariadb_down() { stop_daemon mariadb; }

mariadb_status() { pid_alive mariadb && port_open "$MARIADB_PORT"; }

mariadb_env() {
  echo "UMP_MYSQL_URL=mysql://ump:ump@127.0.0.1:$MARIADB_PORT/ump"
  echo "UMP_MYSQL_ADMIN_URL=mysql://ump:ump@127.0.0.1:$MARIADB_PORT/"
}
