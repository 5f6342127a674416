"""How far off was the time-left estimate? Reads a finished experiment's progress.jsonl (every
estimate the search printed or recorded, raytune_ft/search/progress.py) and reports the estimate
made when a third of the search's time had passed against the time that actually remained.

    python benchmarks/eta_error.py ray_results/<name> [--at 0.333] [--json]
    python benchmarks/eta_error.py ray_results/<name> --replay PLAN.json   # what a plan would have said
    python benchmarks/eta_error.py ray_results/<name> --replay-measured 48000 12000   # ... with exact steps
    python benchmarks/eta_error.py ray_results/<name> --replay-trials   # stage 1's estimates, today's code

The search runs from the "start" record to the "end" record (after the front was tested). An
estimate covers its phase: a "teacher" estimate the teacher's remaining epochs (it ends at its last
epoch) — or, recorded with "covers": "search" (forecast.AfterTeacher planned the trials), the
teacher and all the trials after it; a "trials" estimate the remaining trials and a two-stage
search's stage 2 (they end with the last trial, trials.csv's largest end_time, else the "end"
record). So the estimate
at the point asked for is compared both with what remained of its phase (the estimate's own
error) and with what remained of the search (what a person waiting would have been told). Each
phase is also scored at the same share of its own duration. Relative error = (estimate − actual)
/ actual: positive is too pessimistic. A search that was resumed (several "start" records) is
measured from its last start.

--replay PLAN.json recomputes the teacher phase's estimates of a recorded run as a given plan of
the trials would have made them (forecast.AfterTeacher's fields as JSON: stage1, stage2, slots; the
teacher's epoch times read from its records), then measures them as above: what the estimator
prints today, checked on a run recorded before it existed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

PROGRESS = "progress.jsonl"  # raytune_ft.layout.PROGRESS_JSONL (kept here: the script reads plain files)


def read_records(exp: Path) -> list[dict[str, Any]]:
    """progress.jsonl's records from the last "start" on, in time order."""
    rows = [json.loads(line) for line in (exp / PROGRESS).read_text().splitlines() if line.strip()]
    starts = [i for i, r in enumerate(rows) if r["phase"] == "start"]
    if not starts:
        raise ValueError(f"{exp / PROGRESS}: no start record")
    return sorted(rows[starts[-1]:], key=lambda r: r["time"])


def phase_ends(records: list[dict[str, Any]], trials_end: float | None = None) -> dict[str, float]:
    """When each phase's estimated work ended: the teacher at its last record, the trials at
    `trials_end` (the last trial's end) or else the search's end."""
    end = next((r["time"] for r in reversed(records) if r["phase"] == "end"), None)
    if end is None:
        raise ValueError("no end record: the search did not finish (or was killed)")
    ends = {"end": end}
    teacher = [r["time"] for r in records if r["phase"] == "teacher"]
    if teacher:
        ends["teacher"] = teacher[-1]
    if trials_end or any(r["phase"] == "trials" for r in records):
        ends["trials"] = min(end, trials_end) if trials_end else end
    return ends


def search_wide(record: dict[str, Any]) -> bool:
    """Whether an estimate covers the rest of the search (a teacher estimate with the trials planned)."""
    return record.get("covers") == "search"


def replay(records: list[dict[str, Any]], plan: dict[str, Any]) -> list[dict[str, Any]]:
    """`records` with every teacher estimate recomputed as fit_teacher makes it with `plan` (an
    AfterTeacher's fields): the teacher's epochs left at its mean epoch so far (epoch times: the
    differences of the records' elapsed_s) plus plan.seconds(that mean)."""
    from raytune_ft.search import forecast, progress

    after = forecast.AfterTeacher(stage1=tuple(map(tuple, plan["stage1"])),
                                  stage2=tuple(map(tuple, plan.get("stage2", ()))),
                                  slots=int(plan.get("slots", 1)))
    out, times, last = [], [], 0.0
    for r in records:
        if r["phase"] == "teacher" and r.get("elapsed_s") is not None:
            times.append(r["elapsed_s"] - last)
            last = r["elapsed_s"]
            teacher_eta = progress.teacher_time_left(times, r["epochs"] - r["epoch"])
            mean = sum(times) / len(times)
            r = {**r, "eta_s": teacher_eta + after.seconds(mean), "teacher_eta_s": teacher_eta, "covers": "search"}
        out.append(r)
    return out


def plan_from_trials(exp: Path, records: list[dict[str, Any]], train_rows: int, val_rows: int) -> dict[str, Any]:
    """The plan forecast.plan_after_teacher would have made for the recorded run `exp` had its timed
    steps been exact: each model's stage-1 epoch over the teacher's as the run measured them
    (trials.csv: wall_time_s / epochs_trained of its stage-1 trials, setup and export included; the
    teacher's mean epoch from its records), everything else as the planner does it (the `initial`
    recipes' models first, then the mean over the space's model choices; MO-ASHA's expected epochs;
    stage 2 at the mean model, grown by forecast.ratio_growth). Isolates the planner's assumptions
    from the timing of one step."""
    from raytune_ft.search import forecast, mo_asha

    space = json.loads((exp / "space.json").read_text())
    search, fixed = space["search"], space["fixed"]
    teacher = [r for r in records if r["phase"] == "teacher"]
    teacher_epoch = teacher[-1]["elapsed_s"] / teacher[-1]["epoch"]
    with open(exp / "trials.csv", newline="") as rows:
        stage1 = [r for r in csv.DictReader(rows) if str(r.get("stage", "1")) in ("1", "1.0")]
    per_model: dict[str, list[float]] = {}
    for r in stage1:
        epoch_s = float(r["wall_time_s"]) / float(r["epochs_trained"])
        per_model.setdefault(r["model"], []).append(epoch_s / teacher_epoch)
    ratio = {m: sum(v) / len(v) for m, v in per_model.items()}
    mean1 = sum(ratio.values()) / len(ratio)
    n, epochs = int(search["num_samples"]), int(fixed["epochs"])
    rungs = mo_asha.rung_milestones(1, epochs, 3)  # the shipped space's grace_period 1, reduction_factor 3
    planned = forecast.expected_epochs(n, epochs, rungs, 3, objectives=2)
    first = [ratio.get(r.get("model"), mean1) for r in search.get("initial", [])][:n]
    fraction = float(search["data_fraction"])
    later = int(search["promote"]) + int(search.get("promote_random", 0))
    return {"stage1": [list(x) for x in zip(first + [mean1] * (n - len(first)), planned, strict=True)],
            "stage2": [[mean1 * forecast.ratio_growth(fraction, train_rows, val_rows),
                        float(search.get("promote_epochs") or epochs)]] * later,
            "slots": int(search["max_concurrent"]), "ratios": ratio, "teacher_epoch_s": teacher_epoch}


def replay_trials(exp: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`records` with every stage-1 "trials" estimate recomputed by today's Progress.estimate
    (raytune_ft.search.progress) from the trials' own result.json files: at each record's time, the
    trials started by then (start: first result's timestamp - its time_this_iter_s), their epochs so
    far on the clock, and those whose last result was in as ended. Scheduler, slots and stage 2 from
    the experiment's space.json. Stage-2 records are kept as recorded."""
    from types import SimpleNamespace

    from raytune_ft.search import progress

    space = json.loads((exp / "space.json").read_text())
    search, fixed = space["search"], space["fixed"]
    fraction = float(search.get("data_fraction", 1.0))
    plan = progress.Plan(slots=int(search["max_concurrent"]), early_stopping=True,
                         later_trials=int(search.get("promote", 0)) + int(search.get("promote_random", 0))
                         if fraction < 1 else 0,
                         later_epochs=int(search.get("promote_epochs") or fixed["epochs"]), data_fraction=fraction)
    runs = []
    for folder in sorted(exp.glob("trial_*")):
        rows = [json.loads(line) for line in (folder / "result.json").read_text().splitlines() if line.strip()]
        if rows:
            config = json.loads((folder / "params.json").read_text())
            runs.append((rows[0]["timestamp"] - rows[0]["time_this_iter_s"], rows, config))
    stage1_end = max(rows[-1]["timestamp"] for _, rows, _ in runs) if runs else 0
    out = []
    for record in records:
        if record["phase"] != "trials" or record["time"] > stage1_end + 1:
            out.append(record)
            continue
        est = progress.Progress(int(search["num_samples"]), space["objectives"], epochs=int(fixed["epochs"]),
                                plan=plan)
        est.most_running = plan.slots
        trials = []
        for start, rows, config in runs:
            if start > record["time"]:
                continue
            seen = [r for r in rows if r["timestamp"] <= record["time"]]
            est.clock.start(rows[0]["trial_id"], config.get("model"), start)
            for r in seen:
                est.clock.epoch(r["trial_id"], r["timestamp"])
            ended = len(seen) == len(rows)
            trials.append(SimpleNamespace(trial_id=rows[0]["trial_id"], status="TERMINATED" if ended else "RUNNING",
                                          config=config, last_result=seen[-1] if seen else {}))
        eta, upper = est.estimate(trials)
        out.append({**record, "eta_s": eta, "upper_bound": upper})
    return out


def estimate_at(records: list[dict[str, Any]], when: float, phase: str | None = None) -> dict[str, Any] | None:
    """The last estimate recorded at or before `when` (of `phase` if given), or None."""
    made = [r for r in records if r.get("eta_s") is not None and r["time"] <= when
            and (phase is None or r["phase"] == phase)]
    return made[-1] if made else None


def score(estimate: dict[str, Any], actual_end: float, start: float) -> dict[str, Any]:
    """The estimate's seconds left against the actual seconds left until `actual_end`; made_at_s:
    when it was made, in seconds after `start`."""
    actual = actual_end - estimate["time"]
    return {"phase": estimate["phase"], "made_at_s": estimate["time"] - start, "estimate_s": estimate["eta_s"],
            "actual_s": actual, "relative_error": (estimate["eta_s"] - actual) / actual if actual > 0 else None,
            "upper_bound": bool(estimate.get("upper_bound"))}


def measure(records: list[dict[str, Any]], *, at: float = 1 / 3, trials_end: float | None = None) -> dict[str, Any]:
    """The estimate at `at` of the search's time, against its phase's end and the search's end;
    and each phase's estimate at `at` of that phase."""
    start = records[0]["time"]
    ends = phase_ends(records, trials_end)
    total = ends["end"] - start
    when = start + at * total
    made = estimate_at(records, when)
    out: dict[str, Any] = {"total_s": total, "at": at, "at_s": at * total, "estimate": None, "phases": {}}
    if made is not None:
        whole = score(made, ends["end"], start)
        covered = ends.get("trials", ends["end"]) if search_wide(made) else ends[made["phase"]]
        out["estimate"] = {**score(made, covered, start), "search_left_s": whole["actual_s"],
                           "relative_error_vs_search": whole["relative_error"],
                           "covers": "search" if search_wide(made) else made["phase"]}
    for phase in ("teacher", "trials"):
        rows = [r for r in records if r["phase"] == phase]
        if not rows or phase not in ends:
            continue
        began = rows[0]["time"] - (rows[0].get("elapsed_s") or 0)  # elapsed_s counts from the phase's start
        then = estimate_at(records, began + at * (ends[phase] - began), phase)
        if then is not None and search_wide(then):  # the phase's own share of a search-wide estimate
            then = {**then, "eta_s": then.get("teacher_eta_s")}
        out["phases"][phase] = {"duration_s": ends[phase] - began,
                                **(score(then, ends[phase], start) if then else {"estimate_s": None})}
    return out


def _trials_end(exp: Path) -> float | None:
    path = exp / "trials.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as rows:
        ends = [float(row["end_time"]) for row in csv.DictReader(rows) if row.get("end_time")]
    return max(ends) if ends else None


def _fmt(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds / 60:.1f} min"


def _pct(error: float | None) -> str:
    return "–" if error is None else f"{100 * error:+.0f} %"


def report(exp: Path, result: dict[str, Any]) -> str:
    lines = [f"{exp}: the search took {_fmt(result['total_s'])}"]
    e = result["estimate"]
    if e is None:
        lines.append(f"at {result['at']:.0%} of it ({_fmt(result['at_s'])} in): no estimate had been made yet")
    else:
        bound = " (an upper bound: early stopping)" if e["upper_bound"] else ""
        lines.append(f"at {result['at']:.0%} of it ({_fmt(result['at_s'])} in), the last estimate (made "
                     f"{_fmt(e['made_at_s'])} in, phase {e['phase']}): {_fmt(e['estimate_s'])} left{bound}")
        what = "search's trials" if e.get("covers") == "search" else f"{e['phase']} phase"
        lines.append(f"  actual: {_fmt(e['actual_s'])} left of the {what} "
                     f"(error {_pct(e['relative_error'])}), {_fmt(e['search_left_s'])} of the search "
                     f"(error {_pct(e['relative_error_vs_search'])})")
    for phase, p in result["phases"].items():
        if p.get("estimate_s") is None:
            lines.append(f"{phase} ({_fmt(p['duration_s'])}): no estimate at {result['at']:.0%} of it")
            continue
        lines.append(f"{phase} ({_fmt(p['duration_s'])}): at {result['at']:.0%} of it, estimate "
                     f"{_fmt(p['estimate_s'])}, actual {_fmt(p['actual_s'])} left (error {_pct(p['relative_error'])})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", type=Path, help="a finished experiment folder (holds progress.jsonl)")
    p.add_argument("--at", type=float, default=1 / 3, help="share of the search's time (default: a third)")
    p.add_argument("--json", action="store_true", help="print the measurement as JSON")
    p.add_argument("--replay", type=Path, help="a plan of the trials (AfterTeacher as JSON): recompute the "
                   "teacher's estimates with it first")
    p.add_argument("--replay-measured", nargs=2, type=int, metavar=("TRAIN_ROWS", "VAL_ROWS"),
                   help="replay with the plan made from the run's own measured epochs (plan_from_trials)")
    p.add_argument("--replay-trials", action="store_true",
                   help="recompute stage 1's estimates with today's Progress from the trials' result.json")
    args = p.parse_args(argv)
    try:
        records = read_records(args.experiment)
        if args.replay:
            records = replay(records, json.loads(args.replay.read_text()))
        elif args.replay_measured:
            plan = plan_from_trials(args.experiment, records, *args.replay_measured)
            print(f"plan from the run's epochs: {json.dumps(plan)}")
            records = replay(records, plan)
        if args.replay_trials:
            records = replay_trials(args.experiment, records)
        result = measure(records, at=args.at, trials_end=_trials_end(args.experiment))
    except (OSError, ValueError) as err:
        print(f"eta_error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else report(args.experiment, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
