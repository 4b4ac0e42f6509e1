# shellcheck shell=bash
# What the Helm chart's monitoring objects are checked with; nothing runs.
#   promtool  Debian's `prometheus` package (its daemon is never started: policy-rc.d), to check
#             the rendered alerting rules.
#   CRDs      ServiceMonitor, PodMonitor and PrometheusRule of prometheus-operator, pinned, from the
#             Go module proxy (the module holds them under example/prometheus-operator-crd/); the
#             chart tests apply them to the test kube-apiserver so those objects are validated by
#             the server like every other one.

# shellcheck source=../go/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../go/lib.sh"

PROMETHEUS_OPERATOR_VERSION=v0.85.0
MONITORING_CRDS=$UMP_INFRA_CACHE/monitoring-crds/$PROMETHEUS_OPERATOR_VERSION
MONITORING_CRD_FILES=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_podmonitors.yaml
  monitoring.coreos.com_prometheusrules.yaml)

monitoring_up() {
  command -v promtool >/dev/null || apt_install prometheus
  monitoring_status && return 0
  local dir tmp f
  log "monitoring: fetching prometheus-operator $PROMETHEUS_OPERATOR_VERSION CRDs from the Go module proxy"
  tmp=$(mktemp -d "$UMP_INFRA_CACHE/monitoring.XXXXXX")
  dir=$(cd "$tmp" && go__cmd mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" |
    awk -F'"' '$2 == "Dir" { print $4 }') || { rm -rf "$tmp"; die "monitoring: go mod download failed"; }
  for f in "${MONITORING_CRD_FILES[@]}"; do
    cp "$dir/example/prometheus-operator-crd/$f" "$tmp/" || { rm -rf "$tmp"; die "monitoring: $f missing in $dir"; }
  done
  mkdir -p "$(dirname "$MONITORING_CRDS")"
  rm -rf "$MONITORING_CRDS"
  mv "$tmp" "$MONITORING_CRDS"
  monitoring_status || die "monitoring: not ready after up"
}

monitoring_down() { :; }

monitoring_status() {
  local f
  command -v promtool >/dev/null || return 1
  for f in "${MONITORING_CRD_FILES[@]}"; do [ -s "$MONITORING_CRDS/$f" ] || return 1; done
}

monitoring_env() {
  echo "UMP_PROMTOOL=$(command -v promtool || echo /usr/bin/promtool)"
  echo "UMP_MONITORING_CRDS=$MONITORING_CRDS"
}
