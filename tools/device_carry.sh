#!/usr/bin/env bash
# Builds .dev/carry/, what the lent GPU machine (the `device` tool's `run`) needs beside the
# working tree: its image has torch, transformers and the rest, but not diffusers, gsplat,
# trimesh or fast-simplification, and it reaches no package index (imageio-ffmpeg, 30 MB, stays
# behind: the working tree and the carry must fit 64 MiB, and GPU work writes no video). So:
#   1. wheels for its Python (3.12, x86_64), downloaded here;
#   2. gsplat's CUDA extension prebuilt for that image (../shared/device, torch 2.11 + cu130,
#      sm_90) and its loader, wired in through a sitecustomize.py, so no process JIT-compiles
#      gsplat for ~100 s;
#   3. env.sh, to source there.
#
# Here:    bash tools/device_carry.sh
# There:   run(command="source .dev/carry/env.sh && python -m pytest -q -m gpu tests", carry=[".dev/carry"])
# env.sh installs the wheels into the image's python3 (the machine is fresh on every start, so
# this is idempotent), puts the checkout on PYTHONPATH and points ISM3D_GSPLAT_SO at the .so.
# If the image's torch or Python change, the .so fails to load with an ImportError: unset
# ISM3D_GSPLAT_SO there and gsplat JIT-compiles instead (about 100 s).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared/device}
D=.dev/carry
rm -rf "$D"
mkdir -p "$D/wheels" "$D/site"
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
diffusers_version=$("$py" -c 'import diffusers; print(diffusers.__version__)' 2>/dev/null || echo 0.42.1)
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d "$D/wheels" "diffusers==$diffusers_version" gsplat==1.5.3 trimesh fast-simplification
cp "$SHARED"/gsplat_cuda-*.so "$SHARED"/gsplat_prebuilt.py "$D/site/"
cat > "$D/site/sitecustomize.py" <<'PY'
"""Loaded at interpreter start (this folder is on PYTHONPATH): the prebuilt gsplat kernels."""
import os

if os.environ.get("ISM3D_GSPLAT_SO"):
    import gsplat_prebuilt

    gsplat_prebuilt.install()
PY
cat > "$D/env.sh" <<'SH'
# source from the checkout's root on the GPU machine
python3 -m pip install -q --no-deps --no-index --disable-pip-version-check .dev/carry/wheels/*.whl 2>&1 | grep -v "^WARNING" || true
export PYTHONPATH="$PWD:$PWD/.dev/carry/site${PYTHONPATH:+:$PYTHONPATH}"
export ISM3D_GSPLAT_SO="$(ls "$PWD"/.dev/carry/site/gsplat_cuda-*.so)"
export PYTHONUNBUFFERED=1
SH
du -sh "$D"
ls "$D/wheels"
