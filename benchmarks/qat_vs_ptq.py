"""Quantization-aware fine-tuning against post-training quantization on the same recipes (issue 13).

Each recipe is trained twice with the same seed, data and batches: PTQ only (`quant_aware_fraction`
0) and with the last `--fraction` of the steps fake-quantized (quantization.FakeQuantization).
Both runs are identical until the window opens, then ship through the same quantizer
(`trial.export_and_measure`: ORT QDQ int8, calibrated on training images). Reported per run: the
PyTorch model's val_acc before export (for QAT: with fake quantization on), the int8 file's val_acc
in ONNX Runtime (what the search ranks), the int8 file's test_acc with its Wilson 95 % interval, the
exact McNemar p of QAT vs PTQ on the same test images, the compressed bytes of the int8 file and the
median training step time inside and outside the window.

Datasets: the quickstart's digits (EfficientNet-Lite0, 32 px; its own test split) and Fashion-MNIST
from Debian's dataset-fashion-mnist (`dataset: fashion_mnist`, a stratified `--fashion-samples`
subset of the training set split into train/val, `--fashion-test` of the official t10k as test).

    PYTHONPATH=. python benchmarks/qat_vs_ptq.py --out benchmarks/results/qat_vs_ptq.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from raytune_ft import data, models, train
from raytune_ft.config import TrialConfig
from raytune_ft.deploy import holdout
from raytune_ft.search import trial

# The recipes a search ships most (the quickstart's `initial` recipes and front points).
RECIPES: dict[str, dict[str, Any]] = {
    "dense": {},
    "magnitude 60 %": dict(use_pruning=True, final_sparsity=0.6, pruning_end=0.5, pruning_frequency=10),
    "magnitude 80 %": dict(use_pruning=True, final_sparsity=0.8, pruning_end=0.6, pruning_frequency=10),
    "channels 0.5, round_to 8": dict(use_channel_pruning=True, channel_pruning_ratio=0.5, channel_round_to=8,
                                     channel_pruning_steps=4, pruning_end=0.5),
}
DATASETS: dict[str, dict[str, Any]] = {
    "digits": dict(dataset="digits", test_fraction=0.2),
    "fashion": dict(dataset="fashion_mnist"),
    # the same 5,000 images written class by class as an ImageFolder (train/ + val/, bn_recalibration.py);
    # test: a stratified 20 % of train/
    "fashion_folder": dict(dataset="imagefolder", test_fraction=0.2),
}


def run(base: dict[str, Any], recipe: dict[str, Any], fraction: float, test: holdout.TestSplit,
        splits: data.Splits, folder: Path) -> tuple[dict[str, Any], Any]:
    cfg = TrialConfig.from_dict({**base, **recipe, "use_quantization": True, "quant_aware_fraction": fraction})
    torch.manual_seed(cfg.seed)
    model = models.build_model(cfg.model, splits.num_classes, weights=cfg.weights)
    reports: list[dict[str, Any]] = []
    started = time.perf_counter()
    metrics = train.fit(cfg, model, splits, head_names=models.head_parameter_names(model),
                        report=lambda m, _model, _state: reports.append(dict(m)))
    train_s = time.perf_counter() - started
    steps = [r["epoch_time_s"] for r in reports]
    measured = trial.export_and_measure(model, cfg, splits, metrics, folder)
    result, correct = holdout.evaluate_export(folder, test, threads=cfg.worker_cpus)
    window = [s for s, r in zip(steps, reports, strict=True) if r.get("quant_aware")]
    outside = [s for s, r in zip(steps, reports, strict=True) if not r.get("quant_aware")]
    return {
        "fraction": fraction,
        "val_acc_torch": metrics["val_acc"],
        "val_acc_int8": measured["val_acc"],
        **result,
        "model_bytes_compressed": measured["model_bytes_compressed"],
        "nonzero_params": measured["nonzero_params"],
        "train_s": train_s,
        "epoch_s_window": sorted(window)[len(window) // 2] if window else None,
        "epoch_s_outside": sorted(outside)[len(outside) // 2] if outside else None,
    }, correct


def table(rows: list[dict[str, Any]], fraction: float) -> str:
    """Markdown: one line per (dataset, recipe, seed) pair, PTQ beside QAT, then the medians of the
    paired differences per dataset."""
    pairs: dict[tuple, dict[float, dict[str, Any]]] = {}
    for r in rows:
        pairs.setdefault((r["dataset"], r["recipe"], r["seed"]), {})[r["fraction"]] = r
    lines = ["| dataset | recipe | seed | PTQ int8 val | QAT int8 val | PTQ int8 test [95 %] | QAT int8 test [95 %] "
             "| McNemar p | QAT epoch / PTQ epoch |", "|---" * 9 + "|"]
    deltas: dict[str, list[tuple[float, float]]] = {}
    for (dataset, recipe, seed), by in sorted(pairs.items()):
        if 0.0 not in by or fraction not in by:
            continue
        ptq, qat = by[0.0], by[fraction]
        ratio = (qat["epoch_s_window"] / qat["epoch_s_outside"]) if qat.get("epoch_s_outside") else float("nan")
        lines.append(f"| {dataset} | {recipe} | {seed} | {ptq['val_acc_int8']:.4f} | {qat['val_acc_int8']:.4f} | "
                     f"{ptq['test_acc']:.4f} [{ptq['test_acc_low']:.3f}, {ptq['test_acc_high']:.3f}] | "
                     f"{qat['test_acc']:.4f} [{qat['test_acc_low']:.3f}, {qat['test_acc_high']:.3f}] | "
                     f"{qat.get('mcnemar_p_vs_ptq', float('nan')):.2f} | {ratio:.2f} |")
        deltas.setdefault(dataset, []).append((qat["val_acc_int8"] - ptq["val_acc_int8"],
                                               qat["test_acc"] - ptq["test_acc"]))
    for dataset, d in deltas.items():
        val, test = zip(*d, strict=True)
        med_val, med_test = 100 * statistics.median(val), 100 * statistics.median(test)
        lines.append(f"\n{dataset}: QAT - PTQ over {len(d)} pairs: int8 val median {med_val:+.1f} pts "
                     f"(min {100 * min(val):+.1f}, max {100 * max(val):+.1f}); test median {med_test:+.1f} pts "
                     f"(min {100 * min(test):+.1f}, max {100 * max(test):+.1f})")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--fraction", type=float, default=0.25, help="quant_aware_fraction of the QAT runs")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--fashion-samples", type=int, default=5000, help="Fashion-MNIST images for train + val")
    p.add_argument("--fashion-test", type=int, default=2000, help="t10k images used as the test split")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/qat_vs_ptq.json")
    p.add_argument("--table", action="store_true", help="only print the markdown table of --out")
    args = p.parse_args()
    if args.table:
        print(table(json.loads(Path(args.out).read_text()), args.fraction))
        return
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    rows: list[dict[str, Any]] = json.loads(out.read_text()) if out.is_file() else []
    done = {(r["dataset"], r["recipe"], r["fraction"], r["seed"]) for r in rows}
    for name in args.datasets:
        base = dict(model="efficientnet_lite0", weights="pretrained", image_size=32, epochs=args.epochs, lr=5e-3,
                    batch_size=64, optimizer="adamw", cpus_per_trial=args.threads, seed=args.seed,
                    latency_budget_s=0.5, **DATASETS[name])
        if name == "fashion":
            base.update(max_samples=args.fashion_samples, max_test_samples=args.fashion_test)
        if name == "fashion_folder":
            from bn_recalibration import fashion_folder  # benchmarks/ is on sys.path when run as a script

            root = Path(tempfile.mkdtemp(prefix="fashion_folder_"))
            fashion_folder(root)
            base.update(data_root=str(root))
        splits = data.load_splits(TrialConfig.from_dict(base))
        test = holdout.TestSplit(splits.x_test, splits.y_test)
        print(f"{name}: {len(splits.y_train)} train / {len(splits.y_val)} val / {len(test)} test", flush=True)
        for recipe in args.recipes:
            pair: dict[float, Any] = {}
            for fraction in (0.0, args.fraction):
                key = (name, recipe, fraction, args.seed)
                with tempfile.TemporaryDirectory() as tmp:
                    row, correct = run(base, RECIPES[recipe], fraction, test, splits, Path(tmp))
                pair[fraction] = correct
                row.update(dataset=name, recipe=recipe, seed=args.seed, epochs=args.epochs)
                print(f"  {recipe:26s} {'QAT ' + str(fraction) if fraction else 'PTQ':8s} "
                      f"torch {row['val_acc_torch']:.4f}  int8 val {row['val_acc_int8']:.4f}  "
                      f"test {row['test_acc']:.4f} [{row['test_acc_low']:.3f}, {row['test_acc_high']:.3f}]  "
                      f"{row['model_bytes_compressed']:,} B  {row['train_s']:.0f} s", flush=True)
                if key in done:
                    rows = [r for r in rows if (r["dataset"], r["recipe"], r["fraction"], r["seed"]) != key]
                rows.append(row)
            rows[-1]["mcnemar_p_vs_ptq"] = holdout.mcnemar_p(pair[args.fraction], pair[0.0])
            out.write_text(json.dumps(rows, indent=1))
    print(table(rows, args.fraction))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
