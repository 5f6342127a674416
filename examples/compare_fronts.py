"""Compare the Pareto fronts of two experiments: each front's models, each one's hypervolume under
one normalisation, and which experiment the models of the joint front come from.

    python examples/compare_fronts.py ray_results/a ray_results/b [--plot fronts.png]

Both experiments must have the same objectives. The hypervolume normalisation (pareto.hv_scales)
is taken from both experiments' trials and the first one's teacher, so the two numbers compare.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

import raytune_ft
from raytune_ft import pareto


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("first")
    p.add_argument("second")
    p.add_argument("--plot", help="write both fronts to this PNG")
    args = p.parse_args(argv)
    a, b = raytune_ft.open_experiment(args.first), raytune_ft.open_experiment(args.second)
    if a.objectives != b.objectives:
        raise SystemExit(f"different objectives: {a.objectives} and {b.objectives}")
    objectives = a.objectives
    acc = next(k for k, v in objectives.items() if v == "max")
    size = next(k for k, v in objectives.items() if v == "min")
    teacher = a.teacher.iloc[0].to_dict() if len(a.teacher) else None
    scales = pareto.hv_scales(pd.concat([a.trials, b.trials], ignore_index=True), objectives, teacher)

    for exp in (a, b):
        points = pareto.normalize(exp.front, objectives, scales)
        volume = pareto.hypervolume(points, np.ones(len(objectives))) if len(points) else 0.0
        print(f"{exp.name}: {len(exp.trials)} trials, {len(exp.front)} on the front, hypervolume {volume:.4f}")
        shown = [c for c in ("trial_id", "model", acc, "test_acc", size) if c in exp.front.columns]
        print(exp.front[shown].to_string(index=False), end="\n\n")

    both = pd.concat([a.front.assign(experiment=a.name), b.front.assign(experiment=b.name)], ignore_index=True)
    joint = pareto.pareto_front(both, objectives)
    counts = joint["experiment"].value_counts().to_dict()
    print(f"joint front: {len(joint)} models; " + ", ".join(f"{counts.get(e.name, 0)} from {e.name}" for e in (a, b)))

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for exp, marker in ((a, "o"), (b, "s")):
            front = exp.front.sort_values(size)
            ax.step(front[size], front[acc], where="post", marker=marker, label=exp.name)
        ax.set_xlabel(size)
        ax.set_ylabel(acc)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
