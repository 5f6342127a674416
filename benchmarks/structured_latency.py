"""Dense vs channel-pruned models on CPU: do fewer MACs give lower latency?

For each model, a copy is channel-pruned with Torch-Pruning (uniform L2 importance, head kept)
at the ratio that removes about half of the MACs; both are exported with torch.export and
measured from disk by raytune_ft.deploy.export.measure_export (median latency, fixed threads), side by
side in one run. Random weights: latency does not depend on the values.

    python benchmarks/structured_latency.py --image-size 224 --threads 2 --out benchmarks/results/structured_latency.md
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from raytune_ft import models
from raytune_ft.deploy import export
from raytune_ft.families import channel_pruning


def pruned_copy(name: str, image_size: int, target_mac_ratio: float) -> tuple[torch.nn.Module, float]:
    """Bisect the uniform channel ratio until MACs(pruned) / MACs(dense) is about the target."""
    dense = models.build_model(name, 1000, weights="none").eval()
    dense_macs = export.count_flops(dense, image_size) // 2
    low, high, best = 0.0, 0.9, None
    for _ in range(8):
        ratio = (low + high) / 2
        model = models.build_model(name, 1000, weights="none").eval()
        channel_pruning.ChannelPruner(model, torch.randn(2, 3, image_size, image_size), ratio=ratio, importance="l2",
                                      steps=1, scope="uniform", head=model.get_classifier()).step()
        mac_ratio = (export.count_flops(model, image_size) // 2) / dense_macs
        best = (model, ratio, mac_ratio)
        if abs(mac_ratio - target_mac_ratio) < 0.02:
            break
        low, high = (ratio, high) if mac_ratio > target_mac_ratio else (low, ratio)
    return best[0], best[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["efficientnet_lite0", "resnet18"])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=8.0, help="seconds of timed runs per batch size")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/structured_latency.md"))
    args = p.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            dense = models.build_model(name, 1000, weights="none").eval()
            pruned, ratio = pruned_copy(name, args.image_size, 0.5)
            measured = {}
            for kind, model in (("dense", dense), ("pruned", pruned)):
                folder = Path(tmp) / f"{name}-{kind}"
                export.export_model(model, folder, image_size=args.image_size, manifest={})
                measured[kind] = export.measure_export(folder, image_size=args.image_size, threads=args.threads,
                                                       latency_budget_s=args.budget)
            d, q = measured["dense"], measured["pruned"]
            rows.append((name, ratio, d, q))
            print(name, f"ratio={ratio:.3f}", {k: (d[k], q[k]) for k in d}, flush=True)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} cores visible, torch {torch.__version__}, {args.threads} threads, "
        f"{args.image_size}x{args.image_size} input, median of timed runs ({args.budget:.0f} s per batch size) "
        "after 3 warm-up runs, models exported with torch.export and reloaded from disk.",
        "",
        f"Command: `python benchmarks/structured_latency.py --image-size {args.image_size} --threads {args.threads} "
        f"--budget {args.budget:g}`",
        "",
        "| model | channel ratio | params dense → pruned | MACs dense → pruned | MAC ratio "
        "| latency b1 (ms) dense → pruned | speedup b1 | latency b32 (ms) dense → pruned | speedup b32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, ratio, d, q in rows:
        lines.append(
            f"| {name} | {ratio:.2f} | {d['params'] / 1e6:.2f}M → {q['params'] / 1e6:.2f}M | "
            f"{d['macs'] / 1e9:.3f}G → {q['macs'] / 1e9:.3f}G | {d['macs'] / q['macs']:.2f}× | "
            f"{d['latency_ms_b1']:.1f} → {q['latency_ms_b1']:.1f} | {d['latency_ms_b1'] / q['latency_ms_b1']:.2f}× | "
            f"{d['latency_ms_b32']:.0f} → {q['latency_ms_b32']:.0f} | "
            f"{d['latency_ms_b32'] / q['latency_ms_b32']:.2f}× |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
