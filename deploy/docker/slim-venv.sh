#!/bin/sh
# Removes from tidal's virtual environment what no tidal process uses at run time, then writes
# bytecode for just the modules tidal imports. Run by deploy/docker/Dockerfile in its build
# stage; safe to run on any venv with tidal installed (pip install --no-compile first):
#
#   deploy/docker/slim-venv.sh /opt/tidal
#
# Removed: torch's C++ test binaries and test libraries, headers and CMake files (for building
# extensions, which an image never does), protoc; every package's `tests` folders; pyarrow's
# headers, Cython sources, C++ tests and Arrow Flight; pip, setuptools and wheel (nothing
# installs into the image at run time; deploy/docker/byo-worker.Dockerfile adds user code with
# PYTHONPATH, not pip).
# Bytecode: compiling every module (`pip install` does) costs 250 MB, mostly for modules no
# tidal process imports (sympy, torch._inductor, ...); without any, each process start
# compiles what it imports again (2.5 s more CPU for a worker). So the modules imported by
# `tidal --help`, by importing every tidal module and by one backward pass get their .pyc
# (about 50 MB), and the rest stays source only. PYTHONDONTWRITEBYTECODE in the image keeps
# processes from writing more.
set -eu
venv=${1:?usage: slim-venv.sh VENV}
site=$(echo "$venv"/lib/python3*/site-packages)
[ -d "$site/torch" ] || { echo "slim-venv.sh: no torch in $site" >&2; exit 1; }

"$venv/bin/python" -m pip uninstall --quiet --yes pip setuptools wheel 2>&1 | grep -v "not installed" || true

torch="$site/torch"
rm -rf "$torch/test" "$torch/include" "$torch/share" "$torch/lib/libshm_windows"
# torch/bin: C++ test programs and protoc; torch_shm_manager is what torch.multiprocessing runs.
find "$torch/bin" -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} +
rm -f "$torch"/lib/libjitbackend_test.so "$torch"/lib/libtorchbind_test.so \
  "$torch"/lib/libbackend_with_compiler.so "$torch"/lib/libaoti_custom_ops.so
find "$site" -depth -type d -name tests -path "$site/*/*" -exec rm -rf {} +
rm -rf "$site/pyarrow/include" "$site/pyarrow/src"
# Arrow Flight (an RPC framework; only `import pyarrow.flight` loads it) and pyarrow's C++ tests.
rm -f "$site"/pyarrow/_flight.*.so "$site"/pyarrow/flight.py "$site"/pyarrow/libarrow_flight.so* \
  "$site"/pyarrow/libarrow_python_flight.so* "$site"/pyarrow/_pyarrow_cpp_tests.*.so
find "$site/pyarrow" -type f \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.h' -o -name '*.cc' \) \
  -delete
find "$venv" -type d -name __pycache__ -prune -exec rm -rf {} +

# Bytecode for what tidal runs (see above); an import that fails here fails the build.
env -u PYTHONDONTWRITEBYTECODE "$venv/bin/python" - <<'EOF'
import importlib
import pkgutil

import tidal
import torch

for module in pkgutil.walk_packages(tidal.__path__, "tidal."):
    importlib.import_module(module.name)
torch.nn.Linear(2, 2)(torch.ones(1, 2)).sum().backward()
EOF
env -u PYTHONDONTWRITEBYTECODE "$venv/bin/tidal" --help >/dev/null
