"""CLI: python -m raytune_ft.analyze — tables, plots and one HTML report from experiment folders
(finished, running or interrupted; local or any URI pyarrow.fs understands, e.g. s3://), and
`--export-best`. A thin layer: reading is `report.results`, the analyses `report.analysis`, the page
`report.page`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from raytune_ft.report import analysis, page, results
from raytune_ft.report.results import Experiment, load_experiment


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m raytune_ft.analyze",
        description="Pareto tables, plots and one self-contained HTML report from finished, running "
        "or interrupted experiments (<storage-path>/<name> folders, local or s3://...).")
    p.add_argument("experiments", nargs="+", metavar="EXPERIMENT_DIR")
    p.add_argument("--out", help="output folder (default: the experiment folder itself for one local "
                   "experiment, else ./analysis)")
    p.add_argument("--export-best", type=int, metavar="N",
                   help="copy N front models (spread along the front) with their manifests "
                   "to OUT/export-best")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.export_best is not None and args.export_best < 1:
            raise ValueError(f"--export-best needs N >= 1, got {args.export_best}")
        exps = [load_experiment(e, with_checkpoints=args.export_best is not None) for e in args.experiments]
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"raytune_ft.analyze: error: {err}", file=sys.stderr)
        return 2
    single_local = len(exps) == 1 and "://" not in exps[0].location
    out = Path(args.out) if args.out else (exps[0].local_dir if single_local else Path("analysis"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        _write_outputs(exps, out, args.export_best)
    finally:
        for exp in exps:
            if "://" in exp.location:  # the temporary copy made by results.fetch
                shutil.rmtree(exp.local_dir.parent, ignore_errors=True)
    return 0


def _write_outputs(exps: Sequence[Experiment], out: Path, export_n: int | None) -> None:
    report = page.write_report(exps, out)
    for exp in exps:
        front = results.front(exp.trials, exp.objectives)
        counts = exp.trials["status"].value_counts().to_dict() if len(exp.trials) else {}
        print(f"{exp.name} ({exp.state}): {len(exp.trials)} trials "
              f"({', '.join(f'{n} {s}' for s, n in counts.items()) or 'none started'}), "
              f"{len(front)} on the front")
        if export_n is not None and len(front):
            dest = out / "export-best" / (exp.name if len(exps) > 1 else "")
            index = analysis.export_best(exp, front, export_n, dest)
            print(f"  copied {len(index)} front models to {dest}")
    print(f"wrote {report}")


if __name__ == "__main__":
    sys.exit(main())
