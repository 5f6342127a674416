"""Fit the teacher once per dataset: find a teacher that another experiment in the same storage
folder already fitted on the same data with the same teacher config, and copy it in.

A teacher's identity (`teacher_key`) is a hash of its resolved TrialConfig without the fields that
only say where and how fast it runs (threads, workers, GPUs, the latency budget): the data settings
(dataset, data_root, split fractions, data_seed, max_samples) are among its fields, so the same key
means the same training images in the same order, the same validation split and the same recipe.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from raytune_ft import layout

# fields that do not change what the teacher learns (where it runs, how fast, how long latency is timed)
EXECUTION_FIELDS = ("cpus_per_trial", "cpus_per_worker", "workers_per_trial", "gpus_per_worker", "use_gpu",
                    "sync_batchnorm", "latency_budget_s")


def teacher_key(config: dict[str, Any]) -> str:
    """sha256 (16 hex digits) of the teacher's config without EXECUTION_FIELDS; a relative data_root
    is made absolute so that two working directories agree."""
    fields = {k: v for k, v in config.items() if k not in EXECUTION_FIELDS}
    if fields.get("data_root"):
        fields["data_root"] = str(Path(fields["data_root"]).expanduser().resolve())
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_key(teacher_dir: Path, config: dict[str, Any]) -> None:
    """Record the fitted teacher's key next to its checkpoint (teacher/teacher_key.json)."""
    (teacher_dir / layout.TEACHER_KEY_JSON).write_text(json.dumps({"key": teacher_key(config)}))


def find_fitted(storage: Path, config: dict[str, Any], exclude: Path) -> Path | None:
    """The teacher folder of the newest other experiment under `storage` whose fitted teacher has
    `config`'s key and a complete checkpoint; None if there is none (or `storage` is no local folder)."""
    if not storage.is_dir():
        return None
    key = teacher_key(config)
    found = []
    for key_file in storage.glob(f"*/{layout.TEACHER_DIR}/{layout.TEACHER_KEY_JSON}"):
        teacher_dir = key_file.parent
        if teacher_dir.parent.resolve() == exclude.resolve():
            continue
        try:
            if json.loads(key_file.read_text()).get("key") != key:
                continue
        except (OSError, ValueError):
            continue
        if (teacher_dir / layout.CHECKPOINT_META).is_file() and (teacher_dir / layout.CHECKPOINT_WEIGHTS).is_file():
            found.append((key_file.stat().st_mtime, teacher_dir))
    return max(found)[1] if found else None


def copy_in(source: Path, teacher_dir: Path) -> None:
    """Copy a fitted teacher (checkpoint, exports, train logits, key) into this experiment's teacher
    folder, so the experiment stays whole when the other one is deleted."""
    shutil.copytree(source, teacher_dir, dirs_exist_ok=True)
