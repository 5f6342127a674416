"""Shared tiny inputs for the unit tests, and one small real search shared by the end-to-end tests of
the Python API, the examples, the README, the study's journal and tracking (`readme_run`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn


class TinyClassifier(nn.Module):
    """conv -> BN -> ReLU -> pool -> linear head named `fc` (like a real backbone + head)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


TINY_HEAD = {"fc.weight", "fc.bias"}


def class_splits(size: int, n_train: int = 96, n_val: int = 48):
    """A learnable 3-class problem of `size` px images: the class sets the mean of one colour channel."""
    from raytune_ft.data import Splits

    g = torch.Generator().manual_seed(0)

    def make(n: int):
        y = torch.arange(n) % 3
        x = torch.randn(n, 3, size, size, generator=g) * 0.5
        x[torch.arange(n), y] += 2.0
        return x, y

    return Splits(*make(n_train), *make(n_val), ("a", "b", "c"))


@pytest.fixture
def tiny_splits():
    return class_splits(8)


@pytest.fixture
def one_thread():
    """One torch thread, as a trial with cpus_per_trial=1 (and far faster on a shared CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def without_initial(text: str) -> str:
    """A shipped space file's text without its `search.initial` recipes: for tests that derive
    another space from it by editing lines (removing or adding params), which the complete
    recipes would then no longer fit."""
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith("  initial:"):
            skipping = True
            continue
        if skipping and (line.startswith("    ") or not line.strip()):
            continue
        skipping = False
        out.append(line)
    return "".join(out)


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid` (a search started with start_new_session=True:
    its driver and the local Ray cluster it started)."""
    import subprocess

    out = subprocess.run(["ps", "-o", "pid=,stat=", "-s", str(sid)], capture_output=True, text=True).stdout
    return [int(pid) for pid, stat in (line.split() for line in out.splitlines()) if not stat.startswith("Z")]


def kill_session(proc) -> None:
    """SIGKILL every process of `proc`'s session, again while Ray starts new workers, then reap `proc`."""
    import contextlib
    import os
    import signal
    import time

    for _ in range(50):
        pids = session_pids(proc.pid)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    proc.wait(timeout=30)


# --- one small real search, shared by the API, examples, README, study and tracking tests ---------

README = Path(__file__).resolve().parents[1] / "README.md"
README_SECTION = "## From a notebook or a script"
README_OVERRIDES = '{"epochs": 2, "search.num_samples": 4}'  # as the README's example writes them


def readme_example() -> str:
    """The python block of the README's section "From a notebook or a script", as written."""
    text = README.read_text()
    section = text[text.index(README_SECTION):]
    start = section.index("```python\n") + len("```python\n")
    return section[start:section.index("```", start)]


def tiny_overrides() -> dict:
    """The README example's search made small: 240 digits, 1 epoch, the quickstart's 3 seeded recipes,
    a 1-epoch Lite0 teacher, 0.05 s of latency timing; logged to MLflow when its package is installed."""
    import importlib.util

    overrides = {"epochs": 1, "search.num_samples": 3, "max_samples": 240, "teacher.epochs": 1,
                 "teacher.model": "efficientnet_lite0", "latency_budget_s": 0.05}
    if importlib.util.find_spec("mlflow") is not None:
        overrides["search.callbacks"] = ["mlflow"]
    return overrides


@pytest.fixture(scope="session")
def readme_run(tmp_path_factory):
    """The README's notebook example run as written, in a fresh folder, with `tiny_overrides()` in
    place of its overrides: ONE real search (about 1.5 min here) whose experiment the API, examples,
    README, study and tracking tests read. Returns the example's variables (`exp`, `logits`, ...),
    the folder it ran in (`cwd`) and the experiment folder (`path`)."""
    import json
    import os
    import time
    from types import SimpleNamespace

    code = readme_example()
    assert README_OVERRIDES in code, "the README example's overrides changed: update README_OVERRIDES"
    cwd = tmp_path_factory.mktemp("notebook")
    here = Path.cwd()
    variables: dict = {}
    started = time.perf_counter()
    os.chdir(cwd)
    try:
        exec(compile(code.replace(README_OVERRIDES, json.dumps(tiny_overrides())), str(README), "exec"), variables)
    finally:
        os.chdir(here)
    return SimpleNamespace(variables=variables, cwd=cwd, path=Path(variables["exp"].path),
                           seconds=time.perf_counter() - started)
