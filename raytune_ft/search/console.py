"""What Ray prints around the search's own lines. Always: Ray folds repeated worker lines
("[repeated 3x across cluster]") except the search's own ([<trial>] and [teacher] lines, which
differ only in numbers and must each be seen). When stdout is not a terminal (a log file, a pipe,
CI): no Ray Data progress bars, no ANSI colour codes and no "(pid=...)" prefixes on the lines Ray
forwards from its workers. Set through Ray's environment variables before Ray starts, so the
processes of a local cluster inherit them, and passed to the workers of other nodes in the job's
runtime_env (`worker_env`); a variable the user set is left as it is.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

# Ray's log deduplication never folds lines matching this: the search's own "[<trial id>] epoch ..."
# and "[teacher] ..." lines (ray/_private/ray_logging: RAY_DEDUP_LOGS_ALLOW_REGEX)
OWN_LINES = r"^\[[\w-]+\] "
QUIET = {
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",  # ray.data.DataContext.enable_progress_bars' default, per process
    "RAY_COLOR_PREFIX": "0",  # no colour codes around the prefixes of forwarded worker lines
    "RAY_DISABLE_WORKER_LOG_PREFIX": "1",  # no "(fit_teacher pid=7236)" before them
    # Ray Data's INFO lines, 5-6 per dataset execution (two a trial epoch when the data streams): 45
    # of the 91 lines of a 2-trial, 1-epoch Parquet search (benchmarks/results/quiet_log.md); its
    # warnings stay
    "RAY_DATA_LOG_LEVEL": "WARNING",
}


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = sys.stdout if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def settings(terminal: bool) -> dict[str, str]:
    """The environment variables for Ray's output: deduplication that keeps the search's own lines,
    and with `terminal` False, QUIET."""
    return {"RAY_DEDUP_LOGS_ALLOW_REGEX": OWN_LINES, **({} if terminal else QUIET)}


def worker_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The QUIET settings in force here (`environ`, default os.environ), for ray.init's
    runtime_env={"env_vars": ...}: the processes of a local cluster inherit the driver's environment,
    but a worker on another node does not (its raylet was started by `ray start`), and Ray Data's
    progress bars are drawn by the trial that streams, wherever it runs."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in QUIET if k in environ}


def configure(stream: TextIO | None = None) -> dict[str, str]:
    """Set `settings` for `stream` (default: stdout) into os.environ where not set already, and
    turn Ray Data's progress bars off in this process if ray.data is already imported; returns what
    was set. Call before Ray starts."""
    wanted = settings(is_terminal(stream))
    applied = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(applied)
    _apply_to_imported_ray(applied)
    if "ray.data" in sys.modules and os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS") == "1":
        from ray.data import DataContext

        context = DataContext.get_current()
        context.enable_progress_bars = False
        context.enable_operator_progress_bars = False
    if "ray.data" in sys.modules and "RAY_DATA_LOG_LEVEL" in applied:  # read when ray.data was imported
        import logging

        logging.getLogger("ray.data").setLevel(applied["RAY_DATA_LOG_LEVEL"])
    return applied


def _apply_to_imported_ray(applied: dict[str, str]) -> None:
    """Ray reads RAY_DISABLE_WORKER_LOG_PREFIX and RAY_DEDUP_LOGS_ALLOW_REGEX once, when
    ray._private.ray_constants and ray_logging are imported, and the search's modules import Ray
    (Tune's OptunaSearch) before run_experiment can set them: set the imported copies too. (Found in
    the shipped Fashion-MNIST search's log: every forwarded line kept its "(tune_trial pid=...)" prefix and
    the trials' epoch lines were folded as "[repeated 2x across cluster]".)"""
    import re

    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and applied.get("RAY_DISABLE_WORKER_LOG_PREFIX") == "1":
        constants.RAY_DISABLE_WORKER_LOG_PREFIX = True
    logging_module = sys.modules.get("ray._private.ray_logging")
    if logging_module is not None and "RAY_DEDUP_LOGS_ALLOW_REGEX" in applied:
        for name in ("stdout_deduplicator", "stderr_deduplicator"):
            deduplicator = getattr(logging_module, name, None)
            if deduplicator is not None:
                deduplicator.allow_re = re.compile(applied["RAY_DEDUP_LOGS_ALLOW_REGEX"])
