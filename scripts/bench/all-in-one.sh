# shellcheck shell=bash disable=SC2034  # sets BARE_PID, UMP_PID, RPS... for the sourcing script
# The all-in-one benchmarks' common pieces (sourced by scripts/bench-all-in-one and
# scripts/bench-all-in-one-compare, after scripts/infra.d/lib.sh): the request bodies and the
# channel they go to, starting `ump` on 127.0.0.1, and one bounded wrk load.

KEY=bench-all-in-one-key
# One key drives the whole load: its per-key rate limit stays on (its cost is measured) but high.
export UMP_KEY_RATE_PER_SECOND=${UMP_KEY_RATE_PER_SECOND:-10000000} UMP_KEY_RATE_BURST=${UMP_KEY_RATE_BURST:-10000000}
BARE_ADDR=127.0.0.1:18181
UMP_ADDR=127.0.0.1:18180

# aio_fixture DIR: writes DIR/single.json (one SMS), DIR/batch.json (1,000 SMS) and DIR/channels
# (the `sms` channel on the sandbox provider).
aio_fixture() {
  local dir=$1
  python3 - "$dir" <<'PY'
import json, sys
work = sys.argv[1]
one = lambda i: {"channel": "sms", "to": "+8210%08d" % i, "body": "[UMP] 주문하신 상품이 발송되었습니다. 송장번호 %d" % i}
json.dump(one(1), open(f"{work}/single.json", "w"), ensure_ascii=False)
json.dump({"messages": [one(i) for i in range(1000)]}, open(f"{work}/batch.json", "w"), ensure_ascii=False)
PY
  mkdir -p "$dir/channels"
  # wrk repeats one body, so the policy does not dedupe by content: every accept is delivered.
  cat >"$dir/channels/sms.yaml" <<'YAML'
apiVersion: ump.dev/v1alpha1
kind: DeliveryPolicy
metadata: {name: bench}
spec:
  dedupe: {key: None}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms}
spec:
  type: sms
  policyRef: bench
  providers: [{name: sandbox, type: sandbox}]
YAML
}

wait_http() {
  local url=$1 i
  for ((i = 0; i < 300; i++)); do curl -fsS -o /dev/null "$url" 2>/dev/null && return 0; sleep 0.1; done
  die "bench: $url never became ready"
}

# start_bare BINARY: the ceiling (api/examples/bare_axum.rs) on BARE_ADDR; sets BARE_PID.
start_bare() {
  "$1" "$BARE_ADDR" &
  BARE_PID=$!
  local i
  for ((i = 0; i < 100; i++)); do port_open "${BARE_ADDR##*:}" && return 0; sleep 0.1; done
  die "bench: the bare axum handler never listened on $BARE_ADDR"
}

# start_ump BINARY DATA_DIR WORK: `ump` on UMP_ADDR with WORK's channels, logging to WORK/ump.log;
# sets UMP_PID once it is ready.
start_ump() {
  UMP_DATA_DIR=$2 UMP_CONFIG_DIR=$3/channels UMP_LISTEN=$UMP_ADDR \
    UMP_BOOTSTRAP_API_KEY=$KEY RUST_LOG=warn "$1" >>"$3/ump.log" 2>&1 &
  UMP_PID=$!
  wait_http "http://$UMP_ADDR/readyz"
}

# wrk_run NAME URL BODY CONNECTIONS -> sets RPS P50 P99 (ms) REQUESTS; DURATION seconds of load.
wrk_run() {
  local name=$1 url=$2 body=$3 conns=$4 out line took_us errors
  out=$(BENCH_BODY=$body BENCH_KEY=$KEY wrk -t2 -c"$conns" -d"${DURATION}s" --timeout 10s -s scripts/bench/post.lua "$url")
  line=$(grep '^BENCH ' <<<"$out")
  REQUESTS=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
  took_us=$(sed -E 's/.*duration_us=([0-9]+).*/\1/' <<<"$line")
  errors=$(sed -E 's/.*errors=([0-9]+).*/\1/' <<<"$line")
  P50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$line" | awk '{printf "%.2f", $1 / 1000}')
  P99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$line" | awk '{printf "%.2f", $1 / 1000}')
  RPS=$(awk -v r="$REQUESTS" -v d="$took_us" 'BEGIN {printf "%.0f", r / (d / 1e6)}')
  [ "$errors" -eq 0 ] || die "bench: $name had $errors failed requests (non-2xx, timeouts)"
  log "$name: $RPS req/s, p50 $P50 ms, p99 $P99 ms"
}

# stop PID: ends a benchmark process and waits for it.
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
