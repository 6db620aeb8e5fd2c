# A worker image that carries a user's own code (docs/bring-your-own.md, "Deploying user code"):
# tidal's image plus the package, for the workers only; the coordinator and the shards keep
# tidal's own image, which holds no user code. The build context is the user's folder:
#
#   python examples/byo/make_data.py       # the example's data, baked in below (real data: a volume)
#   docker build -f deploy/docker/byo-worker.Dockerfile -t tidal-byo-worker:0.1.0 examples/byo
#
# deploy/k8s/components/byo-workers runs it as the worker image.
ARG TIDAL_IMAGE=tidal:0.1.0
FROM ${TIDAL_IMAGE}
# Root-owned and read-only for the worker's user (10001): code it cannot rewrite.
COPY byo_user/ /opt/tidal-user/byo_user/
COPY data/ /opt/tidal-user/data/
# The package imports from here. TIDAL_MODEL_MODULES (the allow-list) is set where the worker
# runs (the manifests set it, and would override an ENV here anyway).
ENV PYTHONPATH=/opt/tidal-user
