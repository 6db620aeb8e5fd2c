#!/usr/bin/env bash
# Installs the real components the test suite runs against (not Python packages: those come
# from constraints.txt). Today: Prometheus and promtool (Debian package `prometheus`).
# Without them the metrics tests fail under CI=true and are skipped (with a reason) otherwise.
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "warning: no apt-get; install Prometheus (prometheus, promtool) yourself" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
    echo "warning: not root; run 'apt-get install prometheus' as root for the metrics tests" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package may start a system instance where an init system exists; tests run their own.
command -v prometheus >/dev/null && command -v promtool >/dev/null
