"""Export a trained model so it runs without raytune_ft, and measure the file that is shipped.

`export_model` writes `model.pt2` (a `torch.export` program, the PyTorch artifact), `model.onnx`
(fp32, dynamic batch, the deployment artifact) and `manifest.json`, whose key `deployed` names
the file a trial ships (`model.int8.onnx` when quantized, quantization.py, else `model.onnx`).
`measure_deployed` measures that file: model_bytes (the file), model_bytes_compressed (gzip
level 6 of the file: zeros and int8 both show), params / nonzero_params (its weight
initializers), macs / flops (of the model: FLOPs = 2 x MACs, torch.utils.flop_counter, one image)
and latency_ms_b1 / latency_ms_b32 in ONNX Runtime (CPU EP, fixed intra-op threads, inter-op 1,
sequential): warm-ups, then interleaved b1/b32 repeats; medians and interquartile ranges.
"""

from __future__ import annotations

import gzip
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raytune_ft import layout
from raytune_ft.errors import ExportError, one_line

OPSET = 17
SIZE_METRICS = ("params", "nonzero_params", "model_bytes", "model_bytes_compressed", "macs", "flops",
                "latency_ms_b1", "latency_ms_b32")
SPREAD_METRICS = ("latency_ms_b1_iqr", "latency_ms_b32_iqr")  # interquartile ranges of the timed runs
DEPLOYED_METRICS = (*SIZE_METRICS, *SPREAD_METRICS)
LATENCY_BATCHES = (1, 32)




def export_model(model: nn.Module, directory: str | Path, *, image_size: int, manifest: dict[str, Any]) -> Path:
    """Write model.pt2, model.onnx (fp32) and manifest.json (deployed: model.onnx) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = model.eval().to(memory_format=torch.contiguous_format)
    example = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    torch.export.save(program, directory / layout.MODEL_FILE)
    export_onnx(model, directory / layout.ONNX_FILE, image_size=image_size)
    write_manifest(directory, {**manifest, "files": [layout.MODEL_FILE, layout.ONNX_FILE], "deployed": layout.ONNX_FILE,
                               "input_size": [3, image_size, image_size],
                               "input_layout": "NCHW float32, normalized"})
    return directory


def ship(model: nn.Module, directory: str | Path, *, image_size: int, manifest: dict[str, Any], threads: int,
         latency_budget_s: float, quantize: Callable[[Path], Path] | None = None,
         val: tuple[Any, Any] | None = None, val_acc: float | None = None) -> dict[str, Any]:
    """Export `model` into `directory`, optionally quantize (`quantize(model.onnx) -> int8 path`),
    and measure the deployed file. With `quantize`, val_acc is the int8 file's accuracy on `val`
    (x, y) in ONNX Runtime and the PyTorch model's `val_acc` is kept as val_acc_fp32. The
    manifest's `deployed` names the shipped file and its `metrics` hold the measured values."""
    directory = Path(directory)
    started = time.perf_counter()
    export_model(model, directory, image_size=image_size, manifest=manifest)
    deployed = directory / layout.ONNX_FILE
    measured: dict[str, Any] = {}
    if quantize is not None:
        deployed = quantize(deployed)
        if val is not None:
            measured["val_acc"] = onnx_accuracy(deployed, *val, threads=threads)
            if val_acc is not None:
                measured["val_acc_fp32"] = val_acc
    measured.update(measure_deployed(deployed, model, image_size=image_size, threads=threads,
                                     latency_budget_s=latency_budget_s))
    measured["export_time_s"] = time.perf_counter() - started  # export + quantization + measurement
    files = [layout.MODEL_FILE, layout.ONNX_FILE, *([deployed.name] if deployed.name != layout.ONNX_FILE else [])]
    update_manifest(directory, deployed=deployed.name, files=files, metrics=measured)
    return measured


def export_onnx(model: nn.Module, path: str | Path, *, image_size: int) -> Path:
    """fp32 ONNX with a dynamic batch axis (input `images`, output `logits`). The TorchScript-based
    exporter (dynamo=False) is used: it folds BatchNorm into the convolutions and handles the
    channel-pruned timm/torchvision models here; torch 2.14's dynamo exporter needs onnxscript."""
    model = model.eval()
    example = torch.randn(2, 3, image_size, image_size)
    try:
        with torch.no_grad():
            torch.onnx.export(model, (example,), str(path), input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=OPSET,
                              dynamo=False)
    except Exception as err:  # any exporter failure: the trial fails with this one line (not chained:
        # some exporter exceptions cannot be unpickled, and Ray would report that TypeError instead)
        raise ExportError(f"ONNX export failed: {type(err).__name__}: {one_line(err)}") from None
    return Path(path)


def write_manifest(directory: str | Path, manifest: dict[str, Any]) -> Path:
    path = Path(directory) / layout.MANIFEST
    path.write_text(json.dumps(manifest, indent=2, default=str))
    return path


def update_manifest(directory: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into manifest.json (metrics dicts are merged key by key)."""
    path = Path(directory) / layout.MANIFEST
    manifest = json.loads(path.read_text())
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(manifest.get(key), dict):
            manifest[key] = {**manifest[key], **value}
        else:
            manifest[key] = value
    write_manifest(directory, manifest)
    return manifest


def deployed_file(directory: str | Path) -> Path | None:
    """The file that ships from an export folder: its manifest's `deployed` entry (model.onnx or
    model.int8.onnx); model.pt2 for an export made before the manifest named one; None without a
    manifest (not an export folder)."""
    manifest_path = Path(directory) / layout.MANIFEST
    if not manifest_path.is_file():
        return None
    return Path(directory) / json.loads(manifest_path.read_text()).get("deployed", layout.MODEL_FILE)


def load_exported(directory: str | Path) -> nn.Module:
    """The exported program as a callable module (needs only torch; no pickled Python objects)."""
    return torch.export.load(Path(directory) / layout.MODEL_FILE).module()


def ort_session(path: str | Path, threads: int) -> Any:
    """An ONNX Runtime CPU session: `threads` intra-op threads, one inter-op thread, sequential."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # no per-session warnings in the trial logs
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(model: str | Path | Any, x: np.ndarray | torch.Tensor, *, threads: int = 1,
             batch_size: int = 256) -> np.ndarray:
    """Logits of an ONNX file (or an ort_session) for normalized NCHW float32 images `x`."""
    session = ort_session(model, threads) if isinstance(model, (str, Path)) else model
    x = x.numpy() if isinstance(x, torch.Tensor) else x
    x = np.ascontiguousarray(x, dtype=np.float32)
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def onnx_accuracy(model: str | Path | Any, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, *,
                  threads: int = 1) -> float:
    """Top-1 accuracy of the ONNX file on (x, y), run in ONNX Runtime."""
    y = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if not len(y):
        return float("nan")
    return float((run_onnx(model, x, threads=threads).argmax(1) == y).mean())


def onnx_weight_counts(path: str | Path) -> tuple[int, int]:
    """(params, nonzero_params) of an ONNX file: elements of its weight tensors (initializers and
    Constant nodes, where the exporter puts folded BatchNorm biases). Not counted: scales and zero
    points of Quantize/DequantizeLinear and integer shape constants (int64)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    qdq_params = {name for node in graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")
                  for name in node.input[1:]}
    tensors = [(init.name, init) for init in graph.initializer]
    tensors += [(node.output[0], attr.t) for node in graph.node if node.op_type == "Constant"
                for attr in node.attribute if attr.name == "value"]
    by_name = dict(tensors)
    # the exporter stores equal tensors once (e.g. the zero biases of untrained BatchNorms) and
    # hands them to each layer through Identity nodes: count each layer's copy, as the int8 file does
    tensors += [(node.output[0], by_name[node.input[0]]) for node in graph.node
                if node.op_type == "Identity" and node.input[0] in by_name]
    params = nonzero = 0
    for name, tensor in tensors:
        if name in qdq_params or tensor.data_type == onnx.TensorProto.INT64 or not tensor.dims:
            continue  # Q/DQ parameters, shapes, scalars (Clip bounds)
        values = numpy_helper.to_array(tensor)
        params += int(values.size)
        nonzero += int(np.count_nonzero(values))
    return params, nonzero


def measure_deployed(path: str | Path, model: nn.Module, *, image_size: int, threads: int,
                     latency_budget_s: float = 2.0) -> dict[str, float]:
    """DEPLOYED_METRICS of the ONNX file at `path` (sizes and ORT latency), macs/flops of `model`."""
    path = Path(path)
    raw = path.read_bytes()
    params, nonzero = onnx_weight_counts(path)
    model.eval()
    with torch.no_grad():
        flops = count_flops(model, image_size)
    latency = ort_latency_ms(path, image_size=image_size, threads=threads, budget_s=latency_budget_s)
    return {"params": params, "nonzero_params": nonzero, "model_bytes": len(raw),
            "model_bytes_compressed": len(gzip.compress(raw, compresslevel=6)),
            "macs": flops // 2, "flops": flops, **latency}


def ort_latency_ms(path: str | Path | Any, *, image_size: int, threads: int, budget_s: float = 2.0,
                   batches: tuple[int, ...] = LATENCY_BATCHES, min_rounds: int = 5,
                   max_rounds: int = 200) -> dict[str, float]:
    """Median and interquartile range (ms) of one ONNX Runtime forward pass per batch size, of one
    file or session (`ort_latency_many` of one)."""
    return ort_latency_many([path], [image_size], threads=threads, budget_s=budget_s, batches=batches,
                            min_rounds=min_rounds, max_rounds=max_rounds)[0]


def ort_latency_many(models: list[str | Path | Any], image_sizes: list[int], *, threads: int, budget_s: float = 2.0,
                     batches: tuple[int, ...] = LATENCY_BATCHES, warmup: int = 3, min_rounds: int = 5,
                     max_rounds: int = 200) -> list[dict[str, float]]:
    """Median and interquartile range (ms) of one ONNX Runtime forward pass per batch size, for each
    ONNX file (or session) in `models`, timed together in interleaved rounds: each round runs
    every model at every batch size once, so drift in machine load hits all of them alike.

    Warm-up: untimed rounds until `warmup` rounds ran and a quarter of the budget passed — the
    first fraction of a second after a session starts (its thread pool waking, caches, the clock
    ramping) runs slower; 3 fixed runs left a ±10-20 % spread between repeated measurements of one
    file here. Then timed rounds until `budget_s` × len(models) is spent (at least `min_rounds`,
    at most `max_rounds`)."""
    sessions = [ort_session(m, threads) if isinstance(m, (str, Path)) else m for m in models]
    names = [s.get_inputs()[0].name for s in sessions]
    rng = np.random.default_rng(0)
    inputs = [{b: rng.standard_normal((b, 3, size, size)).astype(np.float32) for b in batches} for size in image_sizes]
    times: list[dict[int, list[float]]] = [{b: [] for b in batches} for _ in sessions]
    total = budget_s * len(sessions)
    for timed, seconds, least in ((False, total / 4, warmup), (True, total, min_rounds)):
        until, rounds = time.perf_counter() + seconds, 0
        while rounds < least or (time.perf_counter() < until and (not timed or rounds < max_rounds)):
            for k, session in enumerate(sessions):
                for b in batches:
                    started = time.perf_counter()
                    session.run(None, {names[k]: inputs[k][b]})
                    if timed:
                        times[k][b].append((time.perf_counter() - started) * 1000)
            rounds += 1
    out = []
    for per_batch in times:
        latency: dict[str, float] = {}
        for b in batches:
            q1, _, q3 = statistics.quantiles(per_batch[b], n=4, method="inclusive")
            latency[f"latency_ms_b{b}"] = statistics.median(per_batch[b])
            latency[f"latency_ms_b{b}_iqr"] = q3 - q1
        out.append(latency)
    return out


@torch.inference_mode()
def measure_export(directory: str | Path, *, image_size: int, threads: int,
                   latency_budget_s: float = 5.0) -> dict[str, float]:
    """Secondary: size, compute and eager CPU latency of `model.pt2`, reloaded from disk (the
    PyTorch artifact; trials report measure_deployed on the ONNX file instead)."""
    directory = Path(directory)
    path = directory / layout.MODEL_FILE
    raw = path.read_bytes()
    program = torch.export.load(path)
    module = program.module()
    names = dict(program.named_parameters())
    params = sum(t.numel() for name, t in program.state_dict.items() if name in names)
    nonzero = sum(int(torch.count_nonzero(t)) for name, t in program.state_dict.items() if name in names)
    assert program.state_dict, "exported program has no weights"
    flops = count_flops(module, image_size)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        latency = {f"latency_ms_b{b}": median_latency_ms(module, b, image_size, latency_budget_s) for b in (1, 32)}
    finally:
        torch.set_num_threads(previous)
    return {"params": params, "nonzero_params": nonzero, "model_bytes": len(raw),
            "model_bytes_compressed": len(gzip.compress(raw, compresslevel=6)),
            "macs": flops // 2, "flops": flops, **latency}


def count_flops(module: nn.Module, image_size: int) -> int:
    """FLOPs of one forward pass on a single image (torch.utils.flop_counter: a multiply-add is 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(module.parameters()).device  # a GPU trial measures its live network
    with FlopCounterMode(display=False) as counter:
        module(torch.randn(1, 3, image_size, image_size, device=device))
    return int(counter.get_total_flops())


def median_latency_ms(module: nn.Module, batch: int, image_size: int, budget_s: float,
                      warmup: int = 3, min_runs: int = 5, max_runs: int = 50) -> float:
    """Median wall time of one eager forward pass in ms: `warmup` untimed runs, then timed runs
    until `budget_s` is spent (at least `min_runs`, at most `max_runs`)."""
    x = torch.randn(batch, 3, image_size, image_size)
    for _ in range(warmup):
        module(x)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() < deadline):
        started = time.perf_counter()
        module(x)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


