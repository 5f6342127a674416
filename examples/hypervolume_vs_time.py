"""Plot the hypervolume of each experiment's completed trials against the search's wall time.

    python examples/hypervolume_vs_time.py ray_results/a ray_results/b ... [--out hypervolume.png]

One normalisation for every curve (pareto.hv_scales over all the experiments' trials, with the
first experiment's teacher), so the curves compare: 1.0 would be a perfect, zero-size model.
"""

from __future__ import annotations

import argparse

import pandas as pd

import raytune_ft
from raytune_ft import pareto


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiments", nargs="+")
    p.add_argument("--out", default="hypervolume.png")
    args = p.parse_args(argv)
    exps = [raytune_ft.open_experiment(path) for path in args.experiments]
    objectives = exps[0].objectives
    teacher = exps[0].teacher.iloc[0].to_dict() if len(exps[0].teacher) else None
    scales = pareto.hv_scales(pd.concat([e.trials for e in exps], ignore_index=True), objectives, teacher)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for exp in exps:
        curve = pareto.hypervolume_curve(exp.trials, objectives, scales, exp.start_time)
        if not len(curve):
            print(f"{exp.name}: no completed trial yet")
            continue
        minutes = curve["elapsed_s"] / 60
        ax.step(minutes, curve["hypervolume"], where="post", marker="o", label=exp.name)
        last = curve.iloc[-1]
        print(f"{exp.name}: hypervolume {last['hypervolume']:.4f} after {int(last['completed'])} completed trials, "
              f"{last['elapsed_s'] / 60:.1f} min")
    ax.set_xlabel("wall time since the search started (min)")
    ax.set_ylabel("hypervolume (normalised)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
