"""Latency spread of identical architectures within one finished search (issue 13's ±5 % goal).

Trials whose deployed files have the same graph — same `model`, same quantization, same `params`
and `macs` (magnitude pruning zeroes weights but keeps every tensor, so those trials share one
graph; channel pruning changes params/macs) — should time alike. Per group of ≥ 2 completed
trials: the median of their ORT latencies at batch 1 and 32 and the spread ±% = (max − min) / 2 /
median, plus the export + quantization + measurement time per trial (export_time_s).

    python benchmarks/latency_spread.py RESULTS/EXPERIMENT [--markdown]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

GRAPH = ["model", "use_quantization", "params", "macs"]


def spread_table(trials: pd.DataFrame) -> pd.DataFrame:
    done = trials[trials["status"] == "completed"].copy()
    done["use_quantization"] = done.get("use_quantization", False)
    done["use_quantization"] = done["use_quantization"].fillna(False).astype(bool)
    rows = []
    for key, group in done.groupby(GRAPH, dropna=False):
        row = dict(zip(GRAPH, key, strict=True)) | {"trials": len(group)}
        for b in (1, 32):
            values = group[f"latency_ms_b{b}"].astype(float)
            median = values.median()
            row[f"b{b} median ms"] = median
            row[f"b{b} min–max ms"] = f"{values.min():.2f}–{values.max():.2f}"
            spread = 100 * (values.max() - values.min()) / 2 / median
            row[f"b{b} spread ±%"] = spread if len(group) > 1 else float("nan")
        row["export+quant+measure s (median)"] = group["export_time_s"].astype(float).median()
        rows.append(row)
    return pd.DataFrame(rows).sort_values("trials", ascending=False)


def markdown(table: pd.DataFrame) -> str:
    cells = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", type=Path)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    table = spread_table(pd.read_csv(args.experiment / "trials.csv"))
    print(markdown(table) if args.markdown else table.to_string(index=False))
    exports = pd.read_csv(args.experiment / "trials.csv")["export_time_s"].dropna()
    print(f"\nexport + quantization + measurement per trial: median {exports.median():.1f} s, "
          f"min {exports.min():.1f}, max {exports.max():.1f} ({len(exports)} trials)")


if __name__ == "__main__":
    main()
