# shellcheck shell=bash
# A real SMTP server that keeps what it receives: Mailpit, compiled from the Go module proxy.
#
#   SMTP   127.0.0.1:1025  STARTTLS offered (not required); certificate issued by a private CA,
#                          UMP_SMTP_TLS_CERT is that CA (trust it, connect to "127.0.0.1").
#                          AUTH PLAIN/LOGIN offered with and without TLS, and optional: Mailpit runs
#                          with --smtp-auth-accept-any, so mail is accepted without AUTH and with
#                          ANY credentials (a wrong password is NOT rejected). Send
#                          UMP_SMTP_USER/UMP_SMTP_PASSWORD; to prove a client authenticated, check
#                          the "Username" field the API reports for the message.
#   HTTP   UMP_SMTP_API=http://127.0.0.1:8025  (Mailpit API v1; the web UI is not built)
#            GET    /api/v1/messages?limit=50          newest first: {"total":..,"messages":[{"ID",
#                                                      "MessageID","From","To","Subject","Username",
#                                                      "Tags",...}]}
#            GET    /api/v1/search?query=<terms>       same shape; e.g. query=subject:"x" or to:a@b
#            GET    /api/v1/message/{ID}               parsed: Subject, From, To[], Cc[], Text,
#                                                      HTML, Attachments[], Headers via .../headers
#            GET    /api/v1/message/{ID}/raw           the raw MIME message as received
#            DELETE /api/v1/messages                   all; or body {"IDs":["..."]} for some
#          (full reference: https://mailpit.axllent.org/docs/api-v1/)
# Messages are kept in a SQLite file in run/smtp across down/up; tests should search for a token
# of their own rather than assume an empty mailbox.
#
# A second server, for what Mailpit does not offer: Postfix's smtp-sink (the test server Postfix's
# own developers use), which advertises PIPELINING (RFC 2920), so UMP's pipelined transactions are
# checked against a real SMTP implementation's parser. Plain text (it also offers AUTH PLAIN and
# LOGIN). It is taken from Debian's postfix package, extracted into the cache rather than
# installed, so no mail system is set up on the machine.
#
#   SMTP   UMP_SMTP_PIPELINING_PORT=2525 on 127.0.0.1   (EHLO: PIPELINING 8BITMIME AUTH DSN ...)
#          UMP_SMTP_PIPELINING_DUMP=<dir>               every transaction accepted, one file each
#                                                       (in hour folders): X-Mail-Args/X-Rcpt-Args
#                                                       lines, then the message as received

# shellcheck source=../go/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../go/lib.sh"

MAILPIT_VERSION=v1.30.1
SMTP_PORT=1025
SMTP_API_PORT=8025
SMTP_USER=ump
SMTP_PASSWORD=ump-test-password
SMTP_PKI=$UMP_INFRA_CACHE/smtp/pki
SMTP_SINK_PORT=2525
SMTP_SINK_ROOT=$UMP_INFRA_CACHE/postfix

SMTP_MAILPIT_PKG=github.com/axllent/mailpit@$MAILPIT_VERSION
SMTP_MAILPIT_LDFLAGS="-s -w -X github.com/axllent/mailpit/config.Version=$MAILPIT_VERSION"

smtp_up() {
  if smtp_status; then
    go__stamp_ok mailpit "$SMTP_MAILPIT_PKG $SMTP_MAILPIT_LDFLAGS" && return 0
    log "smtp: MAILPIT_VERSION changed since the running mailpit was started; restarting"
    smtp_down
  fi
  local dir i
  # The web UI's compiled assets are not in the module zip; `go:embed` only needs the ui/ folder,
  # which is there, so the plain build works and serves the API (the UI pages stay blank).
  go__install_pinned mailpit "$SMTP_MAILPIT_PKG" "$SMTP_MAILPIT_LDFLAGS"
  command -v curl >/dev/null 2>&1 || apt_install curl
  tls__ca "$SMTP_PKI" "ump-infra smtp CA"
  tls__cert "$SMTP_PKI" server "/CN=127.0.0.1" "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth"
  dir=$(run_dir smtp)
  if ! pid_alive smtp; then
    ensure_port_free smtp "$SMTP_PORT"
    ensure_port_free smtp "$SMTP_API_PORT"
    # --smtp-disable-rdns: no DNS here, and every lookup would stall a session until it times out.
    # --disable-version-check: it would ask GitHub, which is unreachable.
    # --max 10000: the default (500) prunes old messages, which a long test run could exceed.
    start_daemon smtp "--database $dir/mailpit.db" "$UMP_INFRA_BIN/mailpit" \
      --database "$dir/mailpit.db" \
      --smtp "127.0.0.1:$SMTP_PORT" --listen "127.0.0.1:$SMTP_API_PORT" \
      --smtp-tls-cert "$SMTP_PKI/server.crt" --smtp-tls-key "$SMTP_PKI/server.key" \
      --smtp-auth-accept-any --smtp-auth-allow-insecure \
      --smtp-disable-rdns --disable-version-check --max 10000
  fi
  smtp__sink_up
  wait_port smtp "$SMTP_PORT" 60
  for ((i = 0; i < 300; i++)); do
    curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$SMTP_API_PORT/readyz" 2>/dev/null && return 0
    pid_alive smtp || { tail -n 40 "$dir/log" >&2; die "smtp: mailpit exited during startup (log: $dir/log)"; }
    sleep 0.2
  done
  die "smtp: the API on 127.0.0.1:$SMTP_API_PORT is not ready after 60 s (log: $dir/log)"
}

# smtp__sink_install: Debian's postfix package, unpacked into the cache (once).
smtp__sink_install() {
  [ -x "$SMTP_SINK_ROOT/usr/sbin/smtp-sink" ] && return 0
  command -v dpkg-deb >/dev/null || die "smtp-sink: dpkg-deb (Debian) is needed to unpack postfix"
  local tmp="$SMTP_SINK_ROOT.tmp.$$" sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  log "smtp-sink: downloading Debian's postfix package"
  (cd "$tmp" && apt-get download -q postfix >/dev/null 2>&1) \
    || { $sudo apt-get update -qq && (cd "$tmp" && apt-get download -q postfix >/dev/null 2>&1); } \
    || die "smtp-sink: apt-get download postfix failed"
  dpkg-deb -x "$tmp"/postfix_*.deb "$tmp/root"
  rm -rf "$SMTP_SINK_ROOT"
  mv "$tmp/root" "$SMTP_SINK_ROOT"
  rm -rf "$tmp"
}

smtp__sink_up() {
  pid_alive smtpsink && return 0
  smtp__sink_install
  local dir user=()
  dir=$(run_dir smtpsink)
  mkdir -p "$dir/mail"
  # What earlier runs left: the tests read only the last hours, and nothing needs older mail.
  find "$dir/mail" -mindepth 1 -maxdepth 1 -mmin +1440 -exec rm -rf {} +
  # As root, smtp-sink insists on being told which user to run as after binding: the same one,
  # so that it can write its dump under this (root-only) home.
  if [ "$(id -u)" -eq 0 ]; then user=(-u root); fi
  ensure_port_free smtpsink "$SMTP_SINK_PORT"
  # -d: one file per transaction under an hour folder; 256: the listen backlog.
  start_daemon smtpsink "smtp-sink" env LD_LIBRARY_PATH="$SMTP_SINK_ROOT/usr/lib/postfix" \
    "$SMTP_SINK_ROOT/usr/sbin/smtp-sink" "${user[@]}" -d "$dir/mail/%Y%m%d%H/" \
    "127.0.0.1:$SMTP_SINK_PORT" 256
  wait_port smtpsink "$SMTP_SINK_PORT" 30
}

smtp_down() {
  stop_daemon smtpsink
  stop_daemon smtp
}

smtp_status() {
  pid_alive smtp && port_open "$SMTP_PORT" && port_open "$SMTP_API_PORT" \
    && pid_alive smtpsink && port_open "$SMTP_SINK_PORT"
}

smtp_env() {
  echo "UMP_SMTP_HOST=127.0.0.1"
  echo "UMP_SMTP_PORT=$SMTP_PORT"
  echo "UMP_SMTP_API=http://127.0.0.1:$SMTP_API_PORT"
  echo "UMP_SMTP_USER=$SMTP_USER"
  echo "UMP_SMTP_PASSWORD=$SMTP_PASSWORD"
  echo "UMP_SMTP_TLS_CERT=$SMTP_PKI/ca.crt"
  echo "UMP_SMTP_PIPELINING_PORT=$SMTP_SINK_PORT"
  echo "UMP_SMTP_PIPELINING_DUMP=$UMP_INFRA_RUN/smtpsink/mail"
}
