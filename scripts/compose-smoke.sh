#!/usr/bin/env bash
# The real run of docker-compose.yml: builds tidal's image with no registry at all (a base
# image made here with debootstrap, wheels downloaded on this host), starts the one-shot
# `certs` service, coordinator, 2 shards, 3 workers and the one-shot `submit` service on the
# host network (no bridge, no private address: everything on 127.0.0.1), with mutual TLS as
# the file has it, and checks that the demo job succeeds and that plaintext is refused.
#
#   make compose-smoke      (root: it installs docker.io, debootstrap, docker-compose if
#                            missing and starts dockerd when none runs)
#
# Minutes (debootstrap, then a torch-sized image), so not part of CI; deploy/SMOKE.md records
# the last run. Prometheus and Grafana (profile `monitoring`) are left out: their images cannot
# be pulled here. Ports come from .env (.env.example), as for any `docker compose up`; they are
# checked first, before minutes of building.
# Environment: TORCH_WHEEL_DIR (default /opt/wheels) holds the CPU torch wheel of
# constraints.txt; TIDAL_SMOKE_WORKDIR (default /tmp/tidal-compose-smoke); PYTHON; any variable
# of .env.example.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=tidal-base:bookworm
IMAGE=tidal:0.1.0
TORCH_WHEEL_DIR=${TORCH_WHEEL_DIR:-/opt/wheels}
WORK=${TIDAL_SMOKE_WORKDIR:-/tmp/tidal-compose-smoke}
PYTHON=${PYTHON:-.venv/bin/python}
WHEELS=deploy/docker/wheels
COMPOSE=(docker-compose -p tidal-smoke -f docker-compose.yml -f deploy/compose/host-network.yml)
SERVICES=(coordinator shard-0 shard-1 worker submit)
# The variables (.env) of every fixed port the tidal services of deploy/compose/host-network.yml
# bind (workers bind free ones; tests/deploy checks this list against the file).
PORT_VARS=(TIDAL_COORDINATOR_GRPC_PORT TIDAL_COORDINATOR_HTTP_PORT TIDAL_COORDINATOR_METRICS_PORT
  TIDAL_SHARD0_GRPC_PORT TIDAL_SHARD0_METRICS_PORT TIDAL_SHARD1_GRPC_PORT TIDAL_SHARD1_METRICS_PORT)
JOB_TIMEOUT_S=900

# A variable's value as compose resolves it (the environment, .env, the default).
port_of() { "$PYTHON" scripts/compose-ports.py --resolve-only "$1"; }
step() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
fail() { echo "compose-smoke: $*" >&2; exit 1; }

step "ports on 127.0.0.1 (.env)"
# One line per port taken, naming the variable to set in .env; nothing is built before.
"$PYTHON" scripts/compose-ports.py "${PORT_VARS[@]}" || fail "ports taken (above)"

[ "$(id -u)" -eq 0 ] || fail "needs root: it starts dockerd"
mkdir -p "$WORK"

step "tools"
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v docker-compose >/dev/null || need+=(docker-compose)
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
docker-compose version --short

step "docker engine"
dockerd_pid=""
if ! docker info >/dev/null 2>&1; then
  # No bridge and no iptables: containers get the host network or none, never a private address.
  dockerd --bridge=none --iptables=false >"$WORK/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || fail "dockerd did not start: $(tail -3 "$WORK/dockerd.log")"
fi
docker version --format 'client {{.Client.Version}}, engine {{.Server.Version}}'

cleanup() {
  "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  if [ -n "$dockerd_pid" ]; then kill "$dockerd_pid" && wait "$dockerd_pid" || true; fi
}
trap cleanup EXIT

step "base image $BASE_IMAGE"
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "already built"
else
  rootfs="$WORK/rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" http://deb.debian.org/debian \
    >"$WORK/debootstrap.log" 2>&1 || fail "debootstrap failed: $(tail -3 "$WORK/debootstrap.log")"
  tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE"
  rm -rf "$rootfs"
fi

step "wheels for an offline build"
torch_version=$(sed -n 's/^torch==//p' constraints.txt)
torch_wheel=$(find "$TORCH_WHEEL_DIR" -maxdepth 1 -name "torch-${torch_version}+cpu-cp311-*.whl" | head -1)
[ -n "$torch_wheel" ] || fail "no torch-${torch_version}+cpu wheel for Python 3.11 in $TORCH_WHEEL_DIR"
# tidal's own dependencies, read from pyproject.toml, plus the build backend it needs.
"$PYTHON" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
  >"$WORK/requirements.txt"
# PIP_CONFIG_FILE=/dev/null: only the flags below decide what is downloaded.
PIP_CONFIG_FILE=/dev/null "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: -d "$WHEELS" \
  -c constraints.txt --find-links "$TORCH_WHEEL_DIR" -r "$WORK/requirements.txt" "setuptools>=69"
cp -n "$torch_wheel" "$WHEELS/" 2>/dev/null || true
ls "$WHEELS"/*.whl | wc -l | xargs echo "wheels:"

step "image $IMAGE"
docker build --network host -f deploy/docker/Dockerfile \
  --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg OFFLINE=1 --build-arg TORCH_WHEEL="$(basename "$torch_wheel")" \
  -t "$IMAGE" . >"$WORK/build.log" 2>&1 || fail "docker build failed: $(tail -20 "$WORK/build.log")"
docker image inspect "$IMAGE" --format '{{.Id}} {{.Size}} bytes, user {{.Config.User}}, entrypoint {{.Config.Entrypoint}}'
# The legacy builder keeps the build stage as an untagged image; it carries this label.
docker image prune --force --filter label=org.tidal.stage=build >/dev/null
echo "image size: $(($(docker image inspect "$IMAGE" --format '{{.Size}}') / 1000000)) MB;" \
  "dangling images left: $(docker images --filter dangling=true -q | wc -l)"

step "compose config (docker-compose.yml + deploy/compose/host-network.yml)"
"${COMPOSE[@]}" config -q
# Again: the build took minutes, in which another program may have taken one.
"$PYTHON" scripts/compose-ports.py "${PORT_VARS[@]}" || fail "ports taken (above)"

step "up: ${SERVICES[*]}"
start=$(date +%s)
"${COMPOSE[@]}" up -d --no-build "${SERVICES[@]}"
"${COMPOSE[@]}" ps
workers=$("${COMPOSE[@]}" ps -q worker | wc -l)
[ "$workers" -eq 3 ] || fail "expected 3 worker replicas (deploy.replicas), got $workers"

step "waiting for the submit service (the demo job)"
submit=$("${COMPOSE[@]}" ps -q submit)
code=$(timeout "$JOB_TIMEOUT_S" docker wait "$submit") || fail "the job did not end within ${JOB_TIMEOUT_S}s"
echo "submit exited with $code after $(($(date +%s) - start))s"
docker logs "$submit" 2>&1 | tail -5

step "the cluster, as the CLI and the REST API see it (mutual TLS, the admin certificate of submit)"
# `run` the submit service: its image, its admin share of the certificates, its environment.
# Its TIDAL_COORDINATOR (127.0.0.1 and the port of .env) is the address: no --coordinator.
RUN_ADMIN=("${COMPOSE[@]}" run --rm --no-deps -T)
"${RUN_ADMIN[@]}" submit status
"${RUN_ADMIN[@]}" submit cluster
"${RUN_ADMIN[@]}" -e HTTP_PORT="$(port_of TIDAL_COORDINATOR_HTTP_PORT)" --entrypoint python3 submit - <<'EOF'
import json, os, ssl, urllib.request
context = ssl.create_default_context(cafile="/etc/tidal/tls/ca.crt")
token = open("/etc/tidal/tls/admin.token").read().strip()
url = f"https://127.0.0.1:{os.environ['HTTP_PORT']}/v1/jobs"
request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
with urllib.request.urlopen(request, timeout=10, context=context) as r:
    jobs = json.load(r)["jobs"]
for j in jobs:
    print("REST /v1/jobs:", j["job_id"], j["state"], "version", j.get("version"), "val_accuracy", j.get("val_accuracy"))
EOF
if "${RUN_ADMIN[@]}" -e TIDAL_TLS_DIR= -e TIDAL_ALLOW_PLAINTEXT=1 submit status; then
  fail "a plaintext client was answered"
fi
echo "a plaintext client is refused (above), as it must be"
if "${COMPOSE[@]}" logs --no-color coordinator shard-0 shard-1 worker | grep -q "SECURITY IS OFF"; then
  fail "a service ran without TLS"
fi
"${COMPOSE[@]}" logs --no-color worker 2>&1 | grep -E "rank [0-9] of" || true
for shard in shard-0 shard-1; do
  echo "$shard checkpoints (named volume): $("${COMPOSE[@]}" exec -T "$shard" sh -c 'ls -R /var/lib/tidal/checkpoints | tr "\n" " "')"
done
echo "networks: $(docker network ls --format '{{.Name}}/{{.Driver}}' | tr '\n' ' ')"
# What Prometheus (profile monitoring, deploy/prometheus/host-network.yml) would read: one file
# per service in the shared tmpfs volume, written by the image's user.
targets=$("${COMPOSE[@]}" exec -T worker sh -c 'ls /var/lib/tidal/scrape-targets' | tr '\n' ' ')
echo "scrape targets (volume scrape-targets): $targets"
[ "$(wc -w <<<"$targets")" -eq 6 ] || fail "expected 6 scrape target files (coordinator, 2 shards, 3 workers)"

step "healthcheck cost: tidal-probe in the coordinator's container, 10 runs"
# CPU (user + system) of each probe process, measured by the container's own Python.
"${COMPOSE[@]}" exec -T coordinator python3 - <<'EOF'
import resource, statistics, subprocess, time
cpu, wall = [], []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(["tidal-probe"], check=True)
    wall.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
print(f"tidal-probe: CPU median {statistics.median(cpu):.3f} s (max {max(cpu):.3f}),"
      f" wall median {statistics.median(wall):.3f} s (max {max(wall):.3f})")
EOF

step "down: SIGTERM, each service must stop gracefully within its stop_grace_period"
"${COMPOSE[@]}" stop >/dev/null
"${COMPOSE[@]}" ps
[ "$code" -eq 0 ] || fail "the demo job did not succeed (submit exited with $code)"
for container in $("${COMPOSE[@]}" ps -q); do
  exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$container")
  [ "$exit_code" -eq 0 ] || fail "$(docker inspect -f '{{.Name}}' "$container") exited with $exit_code on SIGTERM"
done
echo "compose-smoke: OK, the demo job succeeded with mutual TLS on coordinator, 2 shards and 3 workers in containers"
