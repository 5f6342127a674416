"""Honest accuracy: the test split, evaluated once after the search on the deployed files.

Owns `load_test` (the test split, loaded only after the search), `evaluate_export` (accuracy of
an exported model's deployed file: ONNX Runtime for .onnx, torch.export for .pt2), the Wilson 95 %
interval, McNemar's exact test between front points, and `--confirm K` (each front recipe re-run
with K − 1 more seeds as a second small Tune experiment, `confirm/`, summarised in confirmed.csv).
Nothing here is reported to the sampler or a scheduler. Ray and onnxruntime are imported lazily.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from raytune_ft import layout
from raytune_ft.config import TrialConfig

CONFIDENCE = 0.95  # of the Wilson intervals on test accuracy
ALPHA = 0.05  # McNemar: front points with p >= ALPHA are statistically indistinguishable
TEST_COLUMNS = ("test_acc", "test_acc_low", "test_acc_high")


@dataclass(frozen=True)
class TestSplit:
    """The held-out images (model input, as data.Splits) and labels; never given to a trial."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def load_test(cfg: TrialConfig) -> TestSplit | None:
    """The test split of cfg's dataset (the same data_seed split the trials' train/val came from),
    or None when there is none (test_fraction 0 and no test split of the dataset's own)."""
    from raytune_ft import data
    from raytune_ft.data import parquet

    if data.streams(cfg):
        batches = parquet.parquet_test_batches(cfg)
        if batches is None:
            return None
        pairs = list(batches)
        return TestSplit(torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])) if pairs else None
    splits = data.load_splits(cfg)
    return TestSplit(splits.x_test, splits.y_test) if len(splits.y_test) else None


def wilson_interval(correct: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) for a binomial proportion p̂ = correct / n, from
    `scipy.stats.binomtest(correct, n).proportion_ci(method="wilson")`:
    (p̂ + z²/2n ± z·sqrt(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n). Unlike p̂ ± z·sqrt(p̂(1 − p̂)/n) it
    stays inside [0, 1] and keeps its coverage near 0 and 1 (accuracies of 0.99 on a few hundred images)."""
    if n <= 0:
        return math.nan, math.nan
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


def mcnemar_p(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact McNemar test (two-sided) of two classifiers on the same test images: with b images only
    A gets right and c only B gets right, the two-sided binomial test of b successes in b + c trials
    at ½ (`scipy.stats.binomtest`), i.e. p = min(1, 2·P[Binom(b + c, ½) ≤ min(b, c)]). Paired, so
    sharper than comparing two independent intervals."""
    from scipy.stats import binomtest

    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    if b + c == 0:
        return 1.0
    return float(binomtest(b, b + c, 0.5).pvalue)


@torch.inference_mode()
def predict_file(path: str | Path, x: torch.Tensor, *, threads: int = 1, batch_size: int = 256) -> np.ndarray:
    """Class predictions of an exported model file for images `x`: an .onnx file in ONNX Runtime
    (CPU execution provider, `threads` intra-op threads), anything else as a torch.export program."""
    path = Path(path)
    preds = []
    if path.suffix == ".onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for i in range(0, len(x), batch_size):
            batch = x[i : i + batch_size].contiguous().numpy()
            preds.append(session.run(None, {name: batch})[0].argmax(1))
    else:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            module = torch.export.load(path).module()
            for i in range(0, len(x), batch_size):
                preds.append(module(x[i : i + batch_size].contiguous()).argmax(1).numpy())
        finally:
            torch.set_num_threads(previous)
    return np.concatenate(preds) if preds else np.zeros(0, np.int64)


def evaluate_export(export_dir: str | Path, test: TestSplit, *, threads: int = 1) -> tuple[dict[str, Any], np.ndarray]:
    """test_acc with its Wilson 95 % interval for an export folder's deployed file, and the
    per-image correctness (for McNemar)."""
    from raytune_ft.deploy import export

    path = export.deployed_file(export_dir)
    if path is None:
        raise FileNotFoundError(f"{str(Path(export_dir) / layout.MANIFEST)!r} does not exist: not an export folder")
    correct = predict_file(path, test.x, threads=threads) == test.y.numpy()
    low, high = wilson_interval(int(correct.sum()), len(correct))
    return ({"test_acc": float(correct.mean()), "test_acc_low": low, "test_acc_high": high,
             "test_n": len(correct), "test_file": path.name}, correct)


def evaluate_front(front: pd.DataFrame, test: TestSplit | Callable[[str], TestSplit], *,
                   threads: int = 1) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """`front` with test_acc, test_acc_low, test_acc_high, test_n, test_file for every row that has an
    export_path (NaN otherwise), and trial_id -> per-image correctness. `test` may be a function of
    the row's `model` (a searched student architecture gets the test images in its own input view)."""
    front = front.copy()
    rows, correct = [], {}
    for _, row in front.iterrows():
        export_path = row.get("export_path")
        if not isinstance(export_path, str) or not Path(export_path).is_dir():
            rows.append({})
            continue
        split = test(str(row.get("model", ""))) if callable(test) else test
        metrics, correct[str(row["trial_id"])] = evaluate_export(export_path, split, threads=threads)
        rows.append(metrics)
    for column in (*TEST_COLUMNS, "test_n", "test_file"):
        front[column] = [r.get(column, math.nan) for r in rows]
    return front, correct


def indistinguishable(correct: Mapping[str, np.ndarray], alpha: float = ALPHA) -> pd.DataFrame:
    """Every pair of front points with McNemar p and whether they are indistinguishable (p >= alpha)."""
    ids = list(correct)
    pairs = [{"a": a, "b": b, "acc_a": float(correct[a].mean()), "acc_b": float(correct[b].mean()),
              "mcnemar_p": mcnemar_p(correct[a], correct[b])}
             for i, a in enumerate(ids) for b in ids[i + 1:]]
    table = pd.DataFrame(pairs, columns=["a", "b", "acc_a", "acc_b", "mcnemar_p"])
    table["indistinguishable"] = table["mcnemar_p"] >= alpha
    return table


def trust_table(front: pd.DataFrame, acc_name: str = "val_acc") -> pd.DataFrame:
    """Per front point: val − test gap (points of accuracy) and interval width."""
    cols = ["trial_id", acc_name, *TEST_COLUMNS]
    table = front[[c for c in cols if c in front.columns]].copy()
    if "test_acc" in table:
        table["gap"] = table[acc_name] - table["test_acc"]
        table["interval_width"] = table["test_acc_high"] - table["test_acc_low"]
    return table


# --- confirmation: each front recipe with more seeds ---------------------------------------------


# --- the report's "how far to trust this front" section (analyze.py) -------------------------------


def with_test_columns(table: pd.DataFrame, exp_dir: str | Path) -> pd.DataFrame:
    """`table` (trials or a front) with the test columns search wrote into exp_dir/pareto.csv, by trial_id."""
    path = Path(exp_dir) / layout.PARETO_CSV
    if not len(table) or not path.is_file():
        return table
    tested = pd.read_csv(path)
    if "test_acc" not in tested or "trial_id" not in tested:
        return table
    keep = ["trial_id", *TEST_COLUMNS, *(c for c in ("test_n", "test_file") if c in tested)]
    base = table.drop(columns=[c for c in keep[1:] if c in table.columns])
    return base.astype({"trial_id": str}).merge(tested[keep].astype({"trial_id": str}), on="trial_id", how="left")


