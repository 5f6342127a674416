"""Ray's output settings (search/console.py): the search's own lines are never folded by Ray's
deduplication; off a terminal no progress bars, colour codes or pid prefixes; a user's setting wins."""

from __future__ import annotations

import io
import os
import re

from raytune_ft.search import console

KEYS = ("RAY_DEDUP_LOGS_ALLOW_REGEX", *console.QUIET)


def _unset(monkeypatch) -> None:
    for key in KEYS:  # setenv first, so that undoing removes what configure() sets
        monkeypatch.setenv(key, "x")
        monkeypatch.delenv(key)


def test_own_lines_are_kept_whole_and_ray_lines_are_not():
    own = re.compile(console.OWN_LINES)
    assert own.search("[5cb43b1c] epoch 3/12  val_acc=0.9721  sparsity=0.412  (4.1s)")
    assert own.search("[teacher] epoch 1/15  val_acc=0.8134  train_loss=1.6110  fp32  (62.8s, ~14 min left)")
    assert not own.search("2026-12-07 22:03:18,471\tWARNING worker.py:2038 -- something")
    assert not own.search("(_train_worker pid=4321) [5cb43b1c] epoch 1/2")  # prefixes come after matching
    assert not own.search("[repeated 3x across cluster]")


def test_settings_on_and_off_a_terminal():
    assert console.settings(True) == {"RAY_DEDUP_LOGS_ALLOW_REGEX": console.OWN_LINES}
    quiet = console.settings(False)
    assert quiet["RAY_DATA_DISABLE_PROGRESS_BARS"] == "1" and quiet["RAY_COLOR_PREFIX"] == "0"
    assert quiet["RAY_DISABLE_WORKER_LOG_PREFIX"] == "1"


def test_configure_sets_what_is_unset_and_keeps_the_users_choice(monkeypatch):
    _unset(monkeypatch)
    monkeypatch.setenv("RAY_COLOR_PREFIX", "1")  # the user wants colours in their log
    applied = console.configure(io.StringIO())  # a file, not a terminal
    assert "RAY_COLOR_PREFIX" not in applied and os.environ["RAY_COLOR_PREFIX"] == "1"
    assert os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] == "1"
    assert os.environ["RAY_DEDUP_LOGS_ALLOW_REGEX"] == console.OWN_LINES
    _unset(monkeypatch)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert console.configure(Terminal()) == {"RAY_DEDUP_LOGS_ALLOW_REGEX": console.OWN_LINES}
    assert "RAY_DATA_DISABLE_PROGRESS_BARS" not in os.environ


def test_configure_reaches_a_ray_imported_before_it(monkeypatch):
    """The search's modules import Ray before run_experiment configures it: the constants Ray read at
    import (the worker-line prefix, the lines never folded) are set in the imported modules too."""
    import ray._private.ray_constants as constants
    import ray._private.ray_logging as ray_logging

    _unset(monkeypatch)
    monkeypatch.setattr(constants, "RAY_DISABLE_WORKER_LOG_PREFIX", False)
    monkeypatch.setattr(ray_logging.stdout_deduplicator, "allow_re", None)
    console.configure(io.StringIO())
    assert constants.RAY_DISABLE_WORKER_LOG_PREFIX is True
    assert ray_logging.stdout_deduplicator.allow_re.search("[5cb43b1c] epoch 3/12  val_acc=0.9721")


def test_worker_env_carries_the_quiet_settings_to_other_nodes():
    # what run_search passes as ray.init(runtime_env={"env_vars": ...}): only the QUIET keys in force
    environ = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_COLOR_PREFIX": "0", "HOME": "/root",
               "RAY_DEDUP_LOGS_ALLOW_REGEX": console.OWN_LINES}  # read by the driver alone
    assert console.worker_env(environ) == {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_COLOR_PREFIX": "0"}
    assert console.worker_env({}) == {}
    assert set(console.worker_env({**console.settings(terminal=False)})) == set(console.QUIET)
