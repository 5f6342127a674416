"""The search algorithm Tune is given: Ray's OptunaSearch made honest about how a trial ended
(`HonestOptunaSearch`), its study also written to Optuna's own storage (journal.py), and
`make_searcher`, which builds it from a space."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from raytune_ft import layout
from raytune_ft.report import results
from raytune_ft.search import journal
from raytune_ft.search.gate import KDGate

# Where a resumed search writes: Tune restores the searcher with the file paths it had when it was
# pickled, which name the old folder when the experiment was copied or moved, or, for an s3://
# storage path, the first run's local staging folder. run_search sets this before Tune restores.
_resumed_into: Path | None = None


def resume_into(exp_dir: Path | None) -> None:
    """The folder the searcher restored by the next --resume writes its table and journal into."""
    global _resumed_into
    _resumed_into = exp_dir


class HonestOptunaSearch(OptunaSearch):
    """OptunaSearch that tells the study the truth about how a trial ended.

    Ray's OptunaSearch tells every trial with a last result COMPLETE, so a trial a scheduler
    stopped early would enter the study (and NSGA-II's or TPE's model) with truncated metrics.
    Here a trial that reported fewer `epoch`s than its config's `epochs` (default: `epochs`) is
    told PRUNED, without values (Optuna takes none for a pruned multi-objective trial), its last
    epoch and metrics kept as user attributes; a trial that errored is FAIL. Every Optuna trial
    carries Tune's id as its user attribute `trial_id` (the row of trials.csv).
    After every trial the study's table (`study.trials_dataframe()`) is written to `table_path` (CSV)
    when given; after every ask and tell, and when Tune restores the searcher on --resume, the study
    is written to the Optuna journal file `study_path` when given (journal.write_study), with the
    objectives' names, so that `optuna.load_study` and optuna-dashboard open it.
    When the define-by-run `space` has an `active` method (spaces._DefineByRun), a trial's config
    is `space.active(params)`: a flat space samples every param, the config keeps the active ones.
    `points_to_evaluate` (the space's `search.initial` recipes) are enqueued in the study by Ray's
    OptunaSearch and asked for first, in order.
    """

    def __init__(self, *args: Any, epochs: int, table_path: str | None = None, study_path: str | None = None,
                 gate: KDGate | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epochs, self.table_path, self.study_path, self.gate = epochs, table_path, study_path, gate
        if gate is not None and gate.closed:
            self.pin_no_kd()

    def pin_no_kd(self) -> None:
        """Every trial sampled from now on trains without distillation (the teacher-quality gate)."""
        pinned = getattr(self._space, "pinned", None)
        if pinned is not None:
            pinned["use_kd"] = False

    def suggest(self, trial_id: str) -> dict | None:
        import warnings

        with warnings.catch_warnings():  # the time is the sampler's (GPSampler fits its model here)
            warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space` argument took")
            config = super().suggest(trial_id)
        if config is not None:
            self._ot_trials[trial_id].set_user_attr("trial_id", trial_id)
            self.write_study()
        active = getattr(self._space, "active", None)
        return active(config) if config is not None and active is not None else config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        result = result or {}
        ot_trial = self._ot_trials[trial_id]
        trained = result.get("epoch")
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if error:
            self._ot_study.tell(ot_trial, None, state=optuna.trial.TrialState.FAIL)
            self._completed_trials.add(trial_id)
        elif trained is not None and not results.fully_trained(trained, result.get("config"), self.epochs):
            ot_trial.set_user_attr("early_stopped_at_epoch", int(trained))
            for m in metrics:
                if isinstance(result.get(m), (int, float)):
                    ot_trial.set_user_attr(f"last_{m}", float(result[m]))
            self._ot_study.tell(ot_trial, None, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
        else:
            super().on_trial_complete(trial_id, result, error)
        if not error and getattr(self, "gate", None) is not None and self.gate.observe(trial_id, result):
            self.pin_no_kd()
        self.write_table()
        self.write_study()

    def restore(self, checkpoint_path: str) -> None:
        """Tune's --resume: the searcher as it was at the last snapshot, writing into the folder given
        to `resume_into`; the journal follows the study back to the snapshot."""
        super().restore(checkpoint_path)
        if _resumed_into is not None:
            for attr in ("table_path", "study_path"):
                if getattr(self, attr, None):
                    setattr(self, attr, str(_resumed_into / Path(getattr(self, attr)).name))
            if getattr(self, "gate", None) is not None and self.gate.path:
                self.gate.path = str(_resumed_into / Path(self.gate.path).name)
        self.write_study()

    def write_table(self) -> None:
        if self.table_path:
            self._ot_study.trials_dataframe().to_csv(self.table_path, index=False)

    def write_study(self) -> None:
        if getattr(self, "study_path", None) and self._ot_study is not None:  # older pickles have no study_path
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            journal.write_study(self._ot_study, self.study_path, metrics)


def make_searcher(space: Any, exp_dir: Path, teacher_val_acc: float | None = None) -> Any:
    """The search algorithm Tune is given: the space's Optuna sampler in `HonestOptunaSearch`
    (early-stopped trials are told to the study as PRUNED; its table is optuna_trials.csv, the
    study itself optuna_journal.log, named after the experiment folder; the
    `search.initial` recipes are enqueued and run first, recipes.py), behind a ConcurrencyLimiter
    of search.max_concurrent trials: a new trial is asked for as soon as one ends, or, with
    search.synchronous (batch=True), a new group only when the whole previous group ended, so the
    sampler sees the same history on every run with the same seed. Tune pickles it. When the space
    searches distillation, the teacher-quality gate (gate.py) compares `teacher_val_acc` with the
    students as they finish (teacher_gate.json)."""
    from ray.tune.search import ConcurrencyLimiter

    from raytune_ft.config import TrialConfig

    metrics, modes = space.metric_and_mode()
    gate = None
    if "use_kd" in {p.name for p in space.params} or space.fixed.get("use_kd"):
        gate = KDGate(space.search.kd_gate, space.search.kd_gate_margin, teacher_val_acc,
                      path=str(exp_dir / layout.TEACHER_GATE_JSON))
    searcher = HonestOptunaSearch(space=space.define_by_run(), metric=metrics, mode=modes,
                                          sampler=space.make_sampler(),
                                          epochs=space.fixed.get("epochs", TrialConfig().epochs),
                                          points_to_evaluate=[dict(r) for r in space.search.initial] or None,
                                          table_path=str(exp_dir / layout.OPTUNA_TRIALS_CSV),
                                          study_path=str(exp_dir / layout.OPTUNA_JOURNAL), study_name=exp_dir.name,
                                          gate=gate)
    return ConcurrencyLimiter(searcher, max_concurrent=space.search.max_concurrent, batch=space.search.synchronous)
