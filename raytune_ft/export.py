"""Export a trained model so it runs without raytune_ft, and measure what will be shipped.

`export_model` writes `model.pt2` (a `torch.export` program with a dynamic batch dimension),
`model.onnx` when the optional `onnx` package is installed, and `manifest.json` (config,
metrics, class names, input size, normalization). `measure_export` reloads `model.pt2` from
disk and measures it: params, nonzero_params, model_bytes (the file), model_bytes_compressed
(the file gzip-compressed, which is what unstructured sparsity buys), macs and flops
(FLOPs = 2 x MACs, counted by torch.utils.flop_counter for one image of the configured size)
and CPU latency_ms_b1 / latency_ms_b32 (median of repeated runs after warm-up, fixed threads).
"""

from __future__ import annotations

import gzip
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODEL_FILE = "model.pt2"
ONNX_FILE = "model.onnx"
MANIFEST = "manifest.json"
SIZE_METRICS = ("params", "nonzero_params", "model_bytes", "model_bytes_compressed", "macs", "flops",
                "latency_ms_b1", "latency_ms_b32")


def export_model(model: nn.Module, directory: str | Path, *, image_size: int, manifest: dict[str, Any]) -> Path:
    """Write model.pt2 (+ model.onnx if onnx is installed) and manifest.json into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = model.eval().to(memory_format=torch.contiguous_format)
    example = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    torch.export.save(program, directory / MODEL_FILE)
    files = [MODEL_FILE]
    if _has_onnx():
        torch.onnx.export(model, (example,), directory / ONNX_FILE, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}}, dynamo=False)
        files.append(ONNX_FILE)
    (directory / MANIFEST).write_text(json.dumps({**manifest, "files": files, "input_size": [3, image_size, image_size],
                                                  "input_layout": "NCHW float32, normalized"}, indent=2, default=str))
    return directory


def load_exported(directory: str | Path) -> nn.Module:
    """The exported program as a callable module (needs only torch; no pickled Python objects)."""
    return torch.export.load(Path(directory) / MODEL_FILE).module()


@torch.inference_mode()
def measure_export(directory: str | Path, *, image_size: int, threads: int,
                   latency_budget_s: float = 5.0) -> dict[str, float]:
    """Size, compute and CPU latency of the exported model, measured after reloading it from disk."""
    directory = Path(directory)
    path = directory / MODEL_FILE
    raw = path.read_bytes()
    program = torch.export.load(path)
    module = program.module()
    tensors = list(program.state_dict.values())  # parameters and buffers
    params = sum(t.numel() for name, t in program.state_dict.items() if name in dict(program.named_parameters()))
    nonzero = sum(int(torch.count_nonzero(t)) for name, t in program.state_dict.items()
                  if name in dict(program.named_parameters()))
    assert tensors, "exported program has no weights"
    flops = count_flops(module, image_size)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        latency = {f"latency_ms_b{b}": median_latency_ms(module, b, image_size, latency_budget_s) for b in (1, 32)}
    finally:
        torch.set_num_threads(previous)
    return {
        "params": params,
        "nonzero_params": nonzero,
        "model_bytes": len(raw),
        "model_bytes_compressed": len(gzip.compress(raw, compresslevel=6)),
        "macs": flops // 2,
        "flops": flops,
        **latency,
    }


def count_flops(module: nn.Module, image_size: int) -> int:
    """FLOPs of one forward pass on a single image (torch.utils.flop_counter: a multiply-add is 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        module(torch.randn(1, 3, image_size, image_size))
    return int(counter.get_total_flops())


def median_latency_ms(module: nn.Module, batch: int, image_size: int, budget_s: float,
                      warmup: int = 3, min_runs: int = 5, max_runs: int = 50) -> float:
    """Median wall time of one forward pass in ms: `warmup` untimed runs, then timed runs until
    `budget_s` is spent (at least `min_runs`, at most `max_runs`)."""
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


def _has_onnx() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnx") is not None
