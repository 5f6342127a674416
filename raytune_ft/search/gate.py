"""The teacher-quality gate: distillation is searched only while the teacher is clearly stronger
than the students the search has already trained.

Distillation pays only from a teacher clearly stronger than its student (Hinton et al. 2015; on
Fashion-MNIST +0.5 points from a 0.947 teacher, +0.2 from a 0.908 one, docs/benchmarks.md). The
gate compares the teacher's val_acc with the best val_acc of every student trial that has reported
a final result (early-stopped ones included: they reached at least that; subset-stage students
too, which can only make the gate more lenient). Once best_student + margin > teacher, it closes:
one line in the log, `teacher_gate.json` in the experiment, and `use_kd` pinned to false for every
trial sampled afterwards (spaces._DefineByRun.pinned). Trials already running keep their recipe.
`search.kd_gate`: auto (this), keep (never close), drop (closed from the start).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class KDGate:
    mode: str  # search.kd_gate: auto | keep | drop
    margin: float  # val_acc points the teacher must lead the best student by
    teacher_val_acc: float | None
    path: str | None = None  # where the decision is written (teacher_gate.json)
    closed: bool = False
    best_student_val_acc: float | None = None
    best_student_trial: str | None = None
    students_seen: int = 0
    reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode == "drop" and not self.closed:
            self._close("search.kd_gate is drop: distillation is not searched")
        elif self.teacher_val_acc is None and self.mode == "auto" and not self.closed:
            self.reason = "no teacher val_acc recorded: the gate stays open"
        self.write()

    def observe(self, trial_id: str, result: dict[str, Any]) -> bool:
        """A student trial reported its last result; True when this closes the gate."""
        val = result.get("val_acc")
        if not isinstance(val, int | float) or val != val:
            return False
        self.students_seen += 1
        if self.best_student_val_acc is None or val > self.best_student_val_acc:
            self.best_student_val_acc, self.best_student_trial = float(val), trial_id
        if self.closed or self.mode != "auto" or self.teacher_val_acc is None:
            self.write()
            return False
        lead = self.teacher_val_acc - self.best_student_val_acc
        if lead >= self.margin:
            self.write()
            return False
        self._close(f"the teacher (val_acc {self.teacher_val_acc:.4f}) is not clearly stronger than student "
                    f"{self.best_student_trial} (val_acc {self.best_student_val_acc:.4f}; lead {lead * 100:+.2f} "
                    f"points < margin {self.margin * 100:.2f}): distillation is no longer sampled "
                    "(search.kd_gate: keep samples it anyway)")
        return True

    def _close(self, reason: str) -> None:
        self.closed, self.reason = True, reason
        self.history.append({"closed_after_students": self.students_seen, "reason": reason})
        print(f"teacher gate: {reason}", flush=True)
        self.write()

    def write(self) -> None:
        if self.path:
            Path(self.path).write_text(json.dumps(asdict(self), indent=2))

