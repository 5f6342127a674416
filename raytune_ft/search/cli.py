"""CLI: python -m raytune_ft.search — the flags, then `run_experiment` (experiment.py).

The stages live in their own modules: options.py (what can fail on user input, before Ray starts),
storage.py (the experiment folder or s3:// URI), teacher_stage.py (the dense teacher and its
baselines), run.py (Ray Tune with the Optuna sampler, the tables, the test split), fidelity.py (the
full-data stage of a two-stage search), experiment.py (all of them in order). Bad input exits with
status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys

from raytune_ft.search.experiment import run_experiment
from raytune_ft.search.storage import DEFAULT_STORAGE, STORAGE_ENV, UserError


def _builtin_spaces_text() -> str:
    """One line per built-in space: its name and the first sentence of its description."""
    import textwrap

    from raytune_ft.space import spaces

    lines = []
    for name in spaces.builtin_space_names():
        try:
            text = " ".join(spaces.load_space(spaces.builtin_space_path(name)).description.split())
        except Exception as err:  # noqa: BLE001  (--help must print even if one file is broken)
            text = f"(cannot be read: {err})"
        first = text.split(": ")[0] if len(text) > 100 else text
        lines.append(textwrap.fill(f"{name}: {first}", width=100, initial_indent="  ", subsequent_indent="      "))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m raytune_ft.search",
        description="Search fine-tuning recipes (regularization x distillation x pruning x int8 quantization) "
        "and report the accuracy-versus-size Pareto front. With no arguments: the embedded quickstart "
        "(scikit-learn digits + ImageNet-pretrained EfficientNet-Lite students, offline).",
        epilog="built-in spaces (--space NAME):\n" + _builtin_spaces_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--space", default="quickstart",
                   help="search space: a YAML path or a built-in name (listed below); default: quickstart")
    p.add_argument("--num-samples", type=int, help="number of trials (default: the space's search.num_samples)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: the space's search.max_concurrent)")
    p.add_argument("--seed", type=int, help="sampler seed (default: the space's search.seed)")
    p.add_argument("--storage-path", default=os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE,
                   help="folder or URI for results, e.g. s3://bucket/prefix (on a cluster every node must "
                   f"reach it); default: ${STORAGE_ENV} if set (cluster.yaml sets it), else ./{DEFAULT_STORAGE}")
    p.add_argument("--name", help="experiment name (default: <space name>-<date>-<time>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a fixed setting of the space, e.g. --set epochs=2; also "
                   "teacher.KEY=VALUE and search.KEY=VALUE; repeatable")
    p.add_argument("--address", help="join a running Ray cluster (e.g. 'auto'); default: start a local one")
    p.add_argument("--dashboard-host", default=None, metavar="HOST",
                   help="start the local cluster's dashboard bound to HOST (127.0.0.1: this machine only; "
                   "0.0.0.0 exposes it, and with it job submission, to the network); default: no dashboard")
    p.add_argument("--confirm", type=int, default=1, metavar="K",
                   help="after the search, re-run every front recipe with K - 1 more seeds (model init and batch "
                   "order) in parallel and write confirmed.csv (mean ± std of test_acc and size); default 1: "
                   "no re-runs")
    p.add_argument("--resume", action="store_true",
                   help="continue the experiment <storage-path>/<name> instead of refusing to touch it; "
                   "this unpickles Tune's saved state: resume only folders you trust")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """`python -m raytune_ft.search`: the flags, then `run_experiment`; bad input exits with status 2
    and one line on stderr."""
    args = parse_args(argv)
    try:
        run_experiment(**vars(args))
    except UserError as err:
        print(f"raytune_ft.search: error: {err}", file=sys.stderr)
        return 2
    return 0



if __name__ == "__main__":
    sys.exit(main())
