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

# shellcheck source=../go/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../go/lib.sh"

MAILPIT_VERSION=v1.30.1
SMTP_PORT=1025
SMTP_API_PORT=8025
SMTP_USER=ump
SMTP_PASSWORD=ump-test-password
SMTP_PKI=$UMP_INFRA_CACHE/smtp/pki

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
  wait_port smtp "$SMTP_PORT" 60
  for ((i = 0; i < 300; i++)); do
    curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$SMTP_API_PORT/readyz" 2>/dev/null && return 0
    pid_alive smtp || { tail -n 40 "$dir/log" >&2; die "smtp: mailpit exited during startup (log: $dir/log)"; }
    sleep 0.2
  done
  die "smtp: the API on 127.0.0.1:$SMTP_API_PORT is not ready after 60 s (log: $dir/log)"
}

smtp_down() { stop_daemon smtp; }

smtp_status() { pid_alive smtp && port_open "$SMTP_PORT" && port_open "$SMTP_API_PORT"; }

smtp_env() {
  echo "UMP_SMTP_HOST=127.0.0.1"
  echo "UMP_SMTP_PORT=$SMTP_PORT"
  echo "UMP_SMTP_API=http://127.0.0.1:$SMTP_API_PORT"
  echo "UMP_SMTP_USER=$SMTP_USER"
  echo "UMP_SMTP_PASSWORD=$SMTP_PASSWORD"
  echo "UMP_SMTP_TLS_CERT=$SMTP_PKI/ca.crt"
}
