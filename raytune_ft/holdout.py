"""Honest accuracy: the test split, evaluated once after the search on the deployed files.

Owns `load_test` (the test split, loaded only after the search), `evaluate_export` (accuracy of
an exported model's deployed file: ONNX Runtime for .onnx, torch.export for .pt2), the Wilson 95 %
interval, McNemar's exact test between front points, and `--confirm K` (each front recipe re-run
with K − 1 more seeds as a second small Tune experiment, `confirm/`, summarised in confirmed.csv).
Nothing here is reported to the sampler or a scheduler. Ray and onnxruntime are imported lazily.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from raytune_ft.config import TrialConfig

Z95 = 1.959963984540054  # standard normal quantile for a two-sided 95 % interval
ALPHA = 0.05  # McNemar: front points with p >= ALPHA are statistically indistinguishable
TEST_COLUMNS = ("test_acc", "test_acc_low", "test_acc_high")
CONFIRMED_CSV = "confirmed.csv"
CONFIRM_DIR = "confirm"  # the confirmation runs' Tune experiment, inside the experiment folder


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
    from raytune_ft import data, streaming

    if cfg.dataset == "parquet":
        batches = streaming.parquet_test_batches(cfg)
        if batches is None:
            return None
        pairs = list(batches)
        return TestSplit(torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])) if pairs else None
    splits = data.load_splits(cfg)
    return TestSplit(splits.x_test, splits.y_test) if len(splits.y_test) else None


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) for a binomial proportion p̂ = correct / n:
    (p̂ + z²/2n ± z·sqrt(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n). Unlike p̂ ± z·sqrt(p̂(1 − p̂)/n) it
    stays inside [0, 1] and keeps its coverage near 0 and 1 (accuracies of 0.99 on a few hundred images)."""
    if n <= 0:
        return math.nan, math.nan
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_p(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact McNemar test (two-sided) of two classifiers on the same test images: with b images only
    A gets right and c only B gets right, p = min(1, 2·P[Binom(b + c, ½) ≤ min(b, c)]). Paired, so
    sharper than comparing two independent intervals."""
    from scipy.stats import binom

    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    if b + c == 0:
        return 1.0
    return float(min(1.0, 2 * binom.cdf(min(b, c), b + c, 0.5)))


def deployed_file(export_dir: str | Path) -> Path:
    """The file that ships: manifest.json's "deployed" entry (e.g. model.int8.onnx) when it has one,
    else model.pt2."""
    from raytune_ft import export

    export_dir = Path(export_dir)
    manifest = json.loads((export_dir / export.MANIFEST).read_text())
    return export_dir / manifest.get("deployed", export.MODEL_FILE)


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
    path = deployed_file(export_dir)
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


def confirm_runs(front: pd.DataFrame, params: Sequence[str], fixed: Mapping[str, Any], k: int) -> list[dict[str, Any]]:
    """The K − 1 extra runs of every front recipe: {"of": trial_id, "seed": s, "sampled": {...}} with the
    recipe's searched values (from the trial's params.json, so types and inactive params are exact)
    and seeds base + 1 … base + K − 1 (model init and batch order; data_seed, the split, stays)."""
    runs = []
    for _, row in front.iterrows():
        trial_dir = Path(str(row["checkpoint"])).parent
        sampled = json.loads((trial_dir / "params.json").read_text()) if (trial_dir / "params.json").is_file() \
            else {p: row[p] for p in params if p in row and not pd.isna(row[p])}
        base = int(sampled.get("seed", fixed.get("seed", TrialConfig.seed)))
        runs += [{"of": str(row["trial_id"]), "seed": base + i, "sampled": {**sampled, "seed": base + i}}
                 for i in range(1, k)]
    return runs


def run_confirmation(runs: list[dict[str, Any]], exp_dir: Path, trainable_kwargs: dict[str, Any],
                     fixed: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Train `runs` in parallel as one Tune experiment `exp_dir/confirm` (grid over the runs, no
    sampler, no scheduler: nothing learns from them) with the search's own trainable; returns
    {"of", "seed", **final metrics, "export_path"} per run that finished."""
    from ray import tune

    from raytune_ft import trial

    def confirm_trial(config: dict[str, Any], **kwargs: Any) -> None:
        trial.tune_trial(config["run"]["sampled"], **kwargs)

    request = trial.resources_for(dict(fixed))
    trainable = tune.with_resources(tune.with_parameters(confirm_trial, **trainable_kwargs),
                                    lambda config: request(config["run"]["sampled"]))
    tuner = tune.Tuner(
        trainable, param_space={"run": tune.grid_search(runs)},
        tune_config=tune.TuneConfig(reuse_actors=True, trial_dirname_creator=trial.trial_dirname),
        run_config=tune.RunConfig(name=CONFIRM_DIR, storage_path=str(exp_dir), verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  failure_config=tune.FailureConfig(max_failures=0)))
    out = []
    for result in tuner.fit():
        run = result.config["run"]
        if result.error is not None or result.checkpoint is None:
            print(f"confirm: {run['of']} seed {run['seed']} failed: {result.error}", flush=True)
            continue
        out.append({"of": run["of"], "seed": run["seed"], **result.metrics,
                    "export_path": str(Path(result.checkpoint.path) / trial.EXPORT_DIR)})
    return out


def summarize_confirmation(front: pd.DataFrame, runs: Iterable[Mapping[str, Any]], objectives: Mapping[str, str],
                           test: TestSplit | None, *, threads: int = 1) -> pd.DataFrame:
    """One row per front recipe over its original run and the confirmation runs: n_runs, mean and std
    (ddof 1) of val_acc, test_acc (deployed file on the test split) and the size objective, and
    `on_confirmed_front`: whether it stays non-dominated among the front recipes on (mean test_acc,
    mean size) — mean val_acc where there is no test split."""
    from raytune_ft import pareto

    size = next(m for m, mode in objectives.items() if mode == "min")
    acc = next(m for m, mode in objectives.items() if mode == "max")
    by_recipe: dict[str, list[dict[str, Any]]] = {}
    for _, row in front.iterrows():
        by_recipe[str(row["trial_id"])] = [{**row.to_dict(), "seed": row.get("seed", TrialConfig.seed)}]
    for run in runs:
        run = dict(run)
        if test is not None and "test_acc" not in run and Path(run["export_path"]).is_dir():
            run.update(evaluate_export(run["export_path"], test, threads=threads)[0])
        by_recipe[run["of"]].append(run)
    rows = []
    for trial_id, group in by_recipe.items():
        table = pd.DataFrame(group)
        row: dict[str, Any] = {"trial_id": trial_id, "n_runs": len(table),
                               "seeds": " ".join(str(int(s)) for s in table["seed"])}
        for metric in dict.fromkeys([acc, "test_acc", size]):
            values = pd.to_numeric(table.get(metric, pd.Series(dtype=float)), errors="coerce")
            row[f"{metric}_mean"] = values.mean()
            row[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        rows.append(row)
    summary = pd.DataFrame(rows)
    honest = "test_acc_mean" if summary["test_acc_mean"].notna().all() else f"{acc}_mean"
    mask = pareto.pareto_mask(pareto.objective_matrix(summary, {honest: "max", f"{size}_mean": "min"}))
    summary["on_confirmed_front"] = mask
    return summary


# --- the report's "how far to trust this front" section (analyze.py) -------------------------------


def with_test_columns(table: pd.DataFrame, exp_dir: str | Path) -> pd.DataFrame:
    """`table` (trials or a front) with the test columns search wrote into exp_dir/pareto.csv, by trial_id."""
    path = Path(exp_dir) / "pareto.csv"
    if not len(table) or not path.is_file():
        return table
    tested = pd.read_csv(path)
    if "test_acc" not in tested or "trial_id" not in tested:
        return table
    keep = ["trial_id", *TEST_COLUMNS, *(c for c in ("test_n", "test_file") if c in tested)]
    base = table.drop(columns=[c for c in keep[1:] if c in table.columns])
    return base.astype({"trial_id": str}).merge(tested[keep].astype({"trial_id": str}), on="trial_id", how="left")


def trust_section(exp_dir: str | Path, front: pd.DataFrame, acc_name: str,
                  teacher: Mapping[str, Any] | None) -> list[str]:
    """HTML: val − test gap per front point, Wilson 95 % interval widths, the McNemar pairs that are
    statistically indistinguishable, and the confirmed front (confirmed.csv) when there is one."""
    import html

    from raytune_ft import report

    exp_dir = Path(exp_dir)
    front = with_test_columns(front, exp_dir)
    h = ["<h3>How far to trust this front</h3>"]
    if "test_acc" not in front or front["test_acc"].isna().all():
        return h + ['<p class="note">No test accuracy: the experiment has no test split (or predates it).</p>']
    table = trust_table(front, acc_name)
    gap = table["gap"].dropna()
    n = int(front["test_n"].dropna().iloc[0]) if "test_n" in front and front["test_n"].notna().any() else 0
    h.append(f'<p>The front was selected on {html.escape(acc_name)}; test_acc is each point\'s deployed file '
             f"evaluated once, after the search, on {n} held-out images no selection touched, with a Wilson 95 % "
             f"score interval. Median {html.escape(acc_name)} − test_acc gap: <b>{gap.median() * 100:+.2f} points"
             f"</b> (max {gap.max() * 100:+.2f}); median interval width {table['interval_width'].median() * 100:.2f} "
             "points." + (f" Dense teacher: test_acc {report.format_interval(teacher)}." if teacher and
                          "test_acc" in teacher else "") + "</p>")
    h.append(report.html_table(table))
    pairs_path = exp_dir / "test_front.json"
    if pairs_path.is_file():
        pairs = pd.read_json(pairs_path) if pairs_path.stat().st_size > 2 else pd.DataFrame()
        same = pairs[pairs["indistinguishable"]] if len(pairs) else pairs
        h.append(f'<p>Statistically indistinguishable front points (exact McNemar test on the same test images, '
                 f"p ≥ {ALPHA}): {len(same)} of {len(pairs)} pairs"
                 + (": " + ", ".join(f"{a} ~ {b} (p={p:.2f})" for a, b, p in
                                     zip(same["a"], same["b"], same["mcnemar_p"], strict=True)) if len(same) else "")
                 + ".</p>")
    confirmed_path = exp_dir / CONFIRMED_CSV
    if confirmed_path.is_file():
        confirmed = pd.read_csv(confirmed_path)
        off = confirmed.loc[~confirmed["on_confirmed_front"].astype(bool), "trial_id"].astype(str).tolist()
        h += [f"<h3>Confirmed front ({int(confirmed['n_runs'].max())} seeds per recipe)</h3>",
              '<p class="note">Each front recipe re-run with more seeds (model init and batch order; the split '
              "fixed); mean ± std (ddof 1) over the runs. on_confirmed_front: non-dominated on (mean test_acc, "
              "mean size) among the front recipes. "
              + (f"Fell off the front once confirmed: {', '.join(off)}." if off else "Every point stays on it.")
              + "</p>", report.html_table(confirmed)]
    return h
