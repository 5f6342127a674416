#!/usr/bin/env bash
# The wheels the GPU machine lacks (Ray, Optuna, Torch-Pruning and what they need beyond its image),
# downloaded from PyPI at the versions of constraints.txt and made to fit its 64 MiB carry:
# Ray's wheel is repacked without the Java worker's jar and the dashboard's source maps
# (tools/gpu/gpu_wheels.py says why each is safe), everything else is carried as published.
#
#   bash tools/gpu/gpu_wheels.sh                 # -> gpu_wheels/ (git-ignored), cp312 for the H200 image
#   bash tools/gpu/gpu_wheels.sh --python 3.11 --dest /tmp/wheels311   # the same set for a CPU rehearsal
#
# Then the device tool's run carries it: carry ["gpu_wheels", "gpu_data"] (tools/gpu/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYVER=3.12
DEST=gpu_wheels
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python) PYVER="$2"; shift 2 ;;
    --dest) DEST="$2"; shift 2 ;;
    *) echo "usage: $0 [--python 3.12] [--dest gpu_wheels]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
TAG=cp${PYVER/./}

# Not in the image (tools/gpu/gpu_wheels.py IMAGE_PACKAGES), needed by ray[default,data,tune,train],
# optuna or torch-pruning; versions from constraints.txt. typing-extensions is in the image but
# carried too: pydantic 2.14 needs >= 4.16 and the image's version is not known here.
PURE=(
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0
  pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
  tensorboardX==2.6.5
  aiohttp-cors==0.8.1 colorful==0.5.8 opencensus==0.11.4 opencensus-context==0.1.3 googleapis-common-protos==1.76.0
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2
  opentelemetry-exporter-prometheus==0.66b2 opentelemetry-proto==1.45.2 smart_open==9.0.4
  optuna==5.1.0 alembic==1.20.1 Mako==1.4.3 colorlog==6.12.0
  SQLAlchemy==2.1.9  # its pure-Python wheel (2.0 MiB instead of 4.5): the C extensions only speed it up
  torch-pruning==1.6.1
)
COMPILED=(rpds-py==2026.9.1 pydantic-core==2.50.5)

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
fetch() { "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" -d "$WORK/$1" "${@:2}"; }

fetch ray --implementation cp --abi "$TAG" "${PLATFORMS[@]}" ray==2.60.0
fetch compiled --implementation cp --abi "$TAG" "${PLATFORMS[@]}" "${COMPILED[@]}"
fetch pure --implementation py --abi none --platform any "${PURE[@]}"

rm -rf "$DEST"
mkdir -p "$DEST"
"$PY" tools/gpu/gpu_wheels.py repack "$WORK"/ray/ray-2.60.0-*.whl "$DEST"
cp "$WORK"/compiled/*.whl "$WORK"/pure/*.whl "$DEST"/
"$PY" tools/gpu/gpu_wheels.py check "$DEST" --python-version "$PYVER"
