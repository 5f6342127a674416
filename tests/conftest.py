"""Shared tiny inputs for the unit tests."""

from __future__ import annotations

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
