#!/usr/bin/env bash
# Prints the Secrets that tidal's Kubernetes manifests mount for mutual TLS, made from a folder
# written by `tidal certs --split` (or by your own PKI with the same file names: see
# docs/security.md). One Secret per role, holding only that role's share, mounted read-only at
# /etc/tidal/tls; tidal-tls-public holds only the CA certificate (Prometheus Operator scrapes
# /metrics over HTTPS with it). The CA key and the admin certificate stay with you.
#
#   tidal certs pki --split --san tidal-coordinator --san tidal-shard --san tidal-worker \
#     --san '*.tidal-shard.tidal.svc'
#   deploy/k8s/tls-secrets.sh pki | kubectl apply -f -
#   kubectl apply -k deploy/k8s/overlays/sync
#
# The last SAN is the shards' advertised names (TIDAL_ADVERTISE_HOST) in namespace `tidal`;
# another namespace needs its own. Nothing here talks to a cluster (kubectl --dry-run=client).
set -euo pipefail
dir=${1:?usage: tls-secrets.sh PKI_DIR [NAMESPACE]}
namespace=${2:-tidal}
kubectl=${KUBECTL:-kubectl}
printf 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n' "$namespace"
for holder in coordinator shard worker public; do
  if [ ! -d "$dir/$holder" ]; then
    echo "tls-secrets.sh: $dir/$holder is missing: run \`tidal certs $dir --split ...\` first" >&2
    exit 1
  fi
  echo ---
  "$kubectl" create secret generic "tidal-tls-$holder" --namespace "$namespace" \
    --from-file="$dir/$holder" --dry-run=client -o yaml
done
