"""A trained network as the file a user ships: exported (model.pt2, model.onnx and, when
quantized, model.int8.onnx) with its manifest and measured (`export_and_measure`), and the cheap
per-epoch stand-ins for those sizes that an early-stopping scheduler ranks on
(`epoch_size_metrics`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from raytune_ft import models
from raytune_ft.config import TrialConfig
from raytune_ft.data import Splits, calibration_images
from raytune_ft.deploy import export


def export_and_measure(model: torch.nn.Module, cfg: TrialConfig, data: Splits, metrics: dict[str, Any],
                       directory: Path, *, quantize: bool | None = None) -> dict[str, Any]:
    """Export the final model (model.pt2, model.onnx and, when quantized, model.int8.onnx) with
    its manifest, and measure the deployed file (export.ship). Quantized (`quantize`, default
    cfg.use_quantization): val_acc is the int8 file's accuracy in ONNX Runtime on the validation
    split, calibrated on training images only (quantization.py). The export asks the trial's
    families: each may prepare the network (`before_export`) and replace the shipped file
    (`at_export`). Raises ExportError."""
    from raytune_ft import families

    inp = models.input_config(cfg.model)  # the mean/std the inputs were normalized with (data/)
    manifest = {
        "config": cfg.to_dict(),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "class_names": list(data.class_names),
        "normalization": {"mean": list(inp.mean), "std": list(inp.std)},
    }
    if data.decode_view:  # decoded from image files: the centre crop and resampling it was made with
        manifest["decode"] = {"crop_pct": float(data.decode_view[0]), "interpolation": str(data.decode_view[1])}
    # export and its measurements run on the CPU (ONNX Runtime's CPU provider is the deployment
    # target); a GPU trial's network goes back to its device afterwards
    device = next(model.parameters()).device
    model.cpu()
    active = families.build(cfg)
    for family in active:
        family.before_export(model)
    if quantize is not None and quantize != cfg.use_quantization:
        # the dense teacher's fp32 and int8 baselines: its config's technique switches are off
        active = [f for f in active if f.name != "quantization"]
        active += [families.family("quantization")(cfg)] if quantize else []
    transforms = [f for f in active if type(f).at_export is not families.Family.at_export]

    def transform(path: Path) -> Path:
        # int8 calibration reads training images; a streamed dataset's are read from storage here
        images = calibration_images(cfg, data, cfg.quant_calibration_batches * cfg.batch_size)
        for family in transforms:
            path = family.at_export(path, images) or path
        return path

    measured = export.ship(model, directory, image_size=cfg.image_size, manifest=manifest, threads=cfg.worker_cpus,
                           latency_budget_s=cfg.latency_budget_s, val=(data.x_val, data.y_val),
                           val_acc=metrics.get("val_acc"), quantize=transform if transforms else None)
    model.train()
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    return measured



EPOCH_SIZE_METRICS = ("model_bytes", "model_bytes_compressed", "macs", "flops")



def epoch_size_metrics(model: torch.nn.Module, names: tuple[str, ...], image_size: int, *,
                       int8: bool = False) -> dict[str, Any]:
    """Cheap stand-ins, every epoch, for the exported-model sizes an early-stopping scheduler ranks
    on: model_bytes(_compressed) of the state dict serialized in memory (gzip level 6, as
    export.measure_export), macs/flops of the live model. Only `names` are computed. `int8` (the
    trial ships model.int8.onnx): model_bytes_compressed is gzip of the weights on the int8 grid
    (quantization.int8_weight_bytes); space parsing refuses model_bytes then."""
    import gzip
    import io

    out: dict[str, Any] = {}
    if int8 and "model_bytes_compressed" in names:
        from raytune_ft.families.quantization import int8_weight_bytes

        out["model_bytes_compressed"] = len(gzip.compress(int8_weight_bytes(model), compresslevel=6))
    elif {"model_bytes", "model_bytes_compressed"} & set(names):
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        raw = buffer.getvalue()
        out["model_bytes"] = len(raw)
        if "model_bytes_compressed" in names:
            out["model_bytes_compressed"] = len(gzip.compress(raw, compresslevel=6))
    if {"macs", "flops"} & set(names):
        model.eval()  # one image: BatchNorm must not use (or update) batch statistics
        with torch.no_grad():
            flops = export.count_flops(model, image_size)
        model.train()
        out.update(macs=flops // 2, flops=flops)
    return {k: v for k, v in out.items() if k in names}

