#!/usr/bin/env bash
# The GPU check in one command (tools/gpu/gpu_check.py says what it runs), for the device tool's
# run on the H200 machine, whose image has torch, timm, onnx and onnxruntime but no Ray, Optuna or
# Torch-Pruning and no package index: those come as the wheels in gpu_wheels/ (bash
# tools/gpu/gpu_wheels.sh), installed with pip --no-index into a folder on PYTHONPATH (the image's
# python3 is itself a venv, /opt/torch/.venv: a venv made from it with --system-site-packages would
# not see its torch). The Fashion-MNIST subset comes in gpu_data/ (python tools/gpu/gpu_data.py).
#
#   bash tools/gpu/gpu_check.sh               # on the GPU machine: results under $OUT (default ./gpu_check_out)
#   bash tools/gpu/gpu_check.sh --cpu-smoke   # the same steps on this CPU at a tiny size
#
# Without a visible GPU (and without --cpu-smoke) it stops within seconds with status 2.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
OUT=${OUT:-$REPO/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/gpu_check_site}  # where the wheels are installed
WHEELS=${GPU_WHEELS:-gpu_wheels}  # another folder: a rehearsal with wheels for another Python
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
echo "gpu_check.sh $* on $(hostname) at $(date -u +%FT%TZ); python: $(command -v "$PY")"

if [[ " $* " != *" --cpu-smoke "* ]]; then
  if ! timeout 20 nvidia-smi -L; then
    echo "gpu_check: no GPU: nvidia-smi is missing or failed; nothing was run (--cpu-smoke runs the steps on the CPU)" >&2
    exit 2
  fi
fi

# Ray, Optuna, Torch-Pruning: from the carried wheels unless this Python already has them.
if ! timeout 120 "$PY" -c "import ray, optuna, torch_pruning" 2>/dev/null; then
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "gpu_check: Ray/Optuna/Torch-Pruning are not importable and $WHEELS/ holds no wheels (run bash tools/gpu/gpu_wheels.sh here, carry gpu_wheels)" >&2
    exit 3
  fi
  started=$SECONDS
  rm -rf "$SITE"
  if ! timeout 180 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl; then
    echo "gpu_check: installing $WHEELS/ failed" >&2
    exit 3
  fi
  echo "installed $(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE in $((SECONDS - started)) s"
  export PATH="$SITE/bin:$PATH"
  export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi

"$PY" tools/gpu/gpu_check.py run --out "$OUT" "$@"
status=$?
echo "gpu_check.sh: exit $status after $SECONDS s; results in $OUT"
exit $status
