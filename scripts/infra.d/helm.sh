# shellcheck shell=bash
# Helm 3 CLI, compiled from the Go module proxy (no release downloads reachable from CI).
# Nothing runs: "up" means the pinned binary is built and answers `helm version`. It talks to the
# control plane of kube.sh through UMP_KUBECONFIG; kubectl comes from kube.sh (UMP_KUBECTL).

# shellcheck source=../go/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../go/lib.sh"

HELM_VERSION=v3.22.0
# Helm's Makefile stamps in the Kubernetes minor of the k8s.io/client-go in its go.mod (v0.37.x
# for v3.22.0): it is the default .Capabilities.KubeVersion of `helm template` and the target of
# `helm lint`'s deprecation check. Update it together with HELM_VERSION.
HELM_K8S_MINOR=37

helm__ldflags() {
  local v=helm.sh/helm/v3/internal/version
  printf '%s' "-s -w -X $v.version=$HELM_VERSION -X $v.gitTreeState=clean" \
    " -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1" \
    " -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$HELM_K8S_MINOR" \
    " -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1" \
    " -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$HELM_K8S_MINOR"
}

helm_up() {
  go__install_pinned helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "$(helm__ldflags)"
  helm_status || die "helm: $UMP_INFRA_BIN/helm does not run"
}

helm_down() { :; }

helm_status() {
  [ -x "$UMP_INFRA_BIN/helm" ] &&
    [ "$("$UMP_INFRA_BIN/helm" version --template '{{.Version}}' 2>/dev/null || true)" = "$HELM_VERSION" ]
}

helm_env() { echo "UMP_HELM=$UMP_INFRA_BIN/helm"; }
