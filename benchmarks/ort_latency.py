"""Latency against MACs for channel-pruned models, with and without round_to: ONNX Runtime, and with
`--eager` the torch.export program in eager PyTorch too.

For each model (timm, random weights: latency does not depend on the values) and each uniform
channel ratio, a copy is pruned with Torch-Pruning (L2 importance, head kept) at every
`round_to`, exported to ONNX (fp32) and quantized to int8 (raytune_ft.families.quantization, minmax,
random calibration inputs), then timed in ONNX Runtime by raytune_ft.deploy.export.ort_latency_ms
(CPU EP, fixed intra-op threads, interleaved b1/b32, median and IQR), all side by side in one run.
`--eager`: the same network exported with torch.export, reloaded from disk and timed by
raytune_ft.deploy.export.measure_export (median of eager forward passes after 3 warm-up runs).

    python benchmarks/ort_latency.py --threads 2 --image-size 32 --out benchmarks/results/ort_latency.md
    python benchmarks/ort_latency.py --eager --image-size 224 --ratios 0.31 --round-to 1 --budget-s 6 \
        --out benchmarks/results/eager_latency.md
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from raytune_ft import layout, models
from raytune_ft.deploy import export
from raytune_ft.families import channel_pruning, quantization


def build(name: str, ratio: float, round_to: int, image_size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = models.build_model(name, 10, weights="none").eval()
    if ratio > 0:
        channel_pruning.ChannelPruner(model, torch.randn(2, 3, image_size, image_size), ratio=ratio, importance="l2",
                                      steps=1, scope="uniform", head=models.classifier(model),
                                      round_to=round_to).step()
    return model.eval()


def odd_convs(model: torch.nn.Module) -> str:
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return f"{sum(m.out_channels % 8 != 0 for m in convs)}/{len(convs)}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="efficientnet_lite0,resnet18")
    p.add_argument("--ratios", default="0.25,0.44")
    p.add_argument("--round-to", default="1,8,16")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=1.0, help="seconds of interleaved runs per file")
    p.add_argument("--eager", action="store_true", help="also time the torch.export program in eager PyTorch")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    started = time.perf_counter()
    calib = torch.randn(64, 3, args.image_size, args.image_size)
    for name in args.models.split(","):
        settings = [(0.0, 1)] + [(float(r), int(k)) for r in args.ratios.split(",") for k in args.round_to.split(",")]
        dense_ms: dict[str, float] = {}
        for ratio, round_to in settings:
            model = build(name, ratio, round_to, args.image_size)
            macs = export.count_flops(model, args.image_size) // 2
            with tempfile.TemporaryDirectory() as tmp:
                fp32 = Path(tmp) / layout.ONNX_FILE
                if args.eager:  # model.pt2 beside model.onnx
                    export.export_model(model, tmp, image_size=args.image_size, manifest={})
                else:
                    export.export_onnx(model, fp32, image_size=args.image_size)
                int8 = quantization.Quantization(1, "minmax", 64).at_export(fp32, calib)
                row = {"model": name, "ratio": ratio, "round_to": round_to if ratio else "-",
                       "odd convs": odd_convs(model), "MMACs": macs / 1e6}
                timed = {kind: export.ort_latency_ms(path, image_size=args.image_size, threads=args.threads,
                                                     budget_s=args.budget_s) for kind, path in (("fp32", fp32),
                                                                                                ("int8", int8))}
                if args.eager:  # medians only: measure_export reports no spread (0 in the IQR column)
                    eager = export.measure_export(tmp, image_size=args.image_size, threads=args.threads,
                                                  latency_budget_s=args.budget_s)
                    timed["eager"] = {**eager, "latency_ms_b1_iqr": 0.0, "latency_ms_b32_iqr": 0.0}
                for kind, lat in timed.items():
                    for b in (1, 32):
                        key = f"{kind} b{b}"
                        row[f"{key} ms"] = lat[f"latency_ms_b{b}"]
                        row[f"{key} iqr%"] = 100 * lat[f"latency_ms_b{b}_iqr"] / lat[f"latency_ms_b{b}"]
                        if ratio == 0:
                            dense_ms[key] = lat[f"latency_ms_b{b}"]
                        row[f"{key} vs dense"] = lat[f"latency_ms_b{b}"] / dense_ms[key]
            rows.append(row)
            print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    kinds = ("fp32", "int8", "eager") if args.eager else ("fp32", "int8")
    cols = ["model", "ratio", "round_to", "odd convs", "MMACs"] + [
        f"{k} b{b} {m}" for k in kinds for b in (1, 32) for m in ("ms", "vs dense")]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    spread = max(max(r[f"{k} iqr%"] for k in ("fp32 b1", "fp32 b32", "int8 b1", "int8 b32")) for r in rows)
    runtimes = "onnxruntime CPU EP" + (" and eager torch.export programs" if args.eager else "")
    text = (f"{platform.processor() or platform.machine()}, {args.threads} threads, {args.image_size} px, "
            f"{runtimes}; {time.perf_counter() - started:.0f} s; largest ORT IQR/median of any cell "
            f"{spread:.0f} %\n\n" + "\n".join(lines) + "\n")
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
