#!/usr/bin/env bash
# scripts/real-cluster.sh up|down WORK_DIR
#
# A real Kubernetes control plane on this machine for the real-cluster tier (docs/real-cluster.md):
# shared/realcluster's up.sh (etcd, kube-apiserver with RBAC, kube-controller-manager) plus its
# process kubelet, which runs trial pods as local processes with this checkout's .venv/bin first on
# PATH (so they find tunefleet-worker). `down` stops exactly what `up` started.
#   K8S_BIN      folder with kube-apiserver and kube-controller-manager (default /work/k8s/bin)
#   REALCLUSTER  the realcluster scripts (default: shared/realcluster beside or above the checkout)
set -euo pipefail
if [ $# -ne 2 ] || { [ "$1" != up ] && [ "$1" != down ]; }; then
  echo "usage: $0 up|down WORK_DIR" >&2; exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
for candidate in "${REALCLUSTER:-}" "$repo/../shared/realcluster" "$repo/../../shared/realcluster" /work/shared/realcluster; do
  if [ -n "$candidate" ] && [ -x "$candidate/up.sh" ]; then realcluster=$(cd "$candidate" && pwd); break; fi
done
[ -n "${realcluster:-}" ] || { echo "shared/realcluster not found; set REALCLUSTER" >&2; exit 2; }
work=$2

if [ "$1" = down ]; then exec "$realcluster/down.sh" "$work"; fi

"$realcluster/up.sh" "${K8S_BIN:-/work/k8s/bin}" "$work"
PATH="$repo/.venv/bin:$PATH" setsid "$repo/.venv/bin/python" "$realcluster/kubelet.py" \
  --kubeconfig "$work/kubeconfig" --node-name node-1 </dev/null >"$work/logs/kubelet.log" 2>&1 &
echo "$! kubelet.py" >> "$work/pids"
for _ in $(seq 1 60); do
  if KUBECONFIG="$work/kubeconfig" kubectl get node node-1 -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True; then
    echo "node-1 Ready; export KUBECONFIG=$work/kubeconfig"; exit 0
  fi
  sleep 1
done
echo "node-1 never became Ready; see $work/logs/kubelet.log" >&2; exit 1
