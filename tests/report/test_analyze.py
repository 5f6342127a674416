"""Tests for raytune_ft.analyze / results and the Progress callback, on real experiments made here.

Two small real searches on the digits subset: one finished, run in-process, and one killed with
SIGKILL while its first trial is training (the "interrupted" experiment; it reuses the first
one's teacher). The report built from them is opened in headless Chromium.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from raytune_ft import analyze, pareto, search
from raytune_ft.config import TrialConfig
from raytune_ft.report import analysis, results
from raytune_ft.search.trial import Progress
from tests.conftest import kill_session, session_pids, without_initial

# the sampler these tests were written for (the shipped default is tpe since issue 16)
SMALL = ["--set", "max_samples=240", "--set", "epochs=2", "--set", "image_size=32", "--set", "search.sampler=nsga2"]
# Exporting + measuring a model costs ~25 s here (tested in test_export.py); analyze only copies
# the export folder, which test_export_best_prefers_the_exported_folder covers.
NO_EXPORT = ["--set", "export=false"] if "export" in {f.name for f in dataclasses.fields(TrialConfig)} else []


def _quickstart_without_export(folder: Path) -> str:
    """The quickstart without its quantization family and ranked on nonzero_params: int8 needs the
    exported file (and model_bytes_compressed is measured on it), which these tests skip for speed."""
    from raytune_ft.space import spaces

    text = without_initial(spaces.builtin_space_path("quickstart").read_text())
    kept = [line for line in text.splitlines() if "quant" not in line.split(":")[0]]
    path = folder / "quickstart_no_export.yaml"
    path.write_text("\n".join(kept).replace("model_bytes_compressed: min", "nonzero_params: min") + "\n")
    return str(path)
OBJECTIVES = {"val_acc": "max", "nonzero_params": "min"}
# the killed search's trials: long enough that the kill lands mid-trial (2 epochs of 240 images
# can both finish between two looks at result.json)
KILLED_EPOCHS = 20
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, str]:
    """A finished 3-trial search run in-process; returns the folder and what the search printed.
    search's own trials.csv/pareto.csv are kept aside as search_*.csv."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    storage = tmp_path_factory.mktemp("done")
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            code = search.main(["--storage-path", str(storage), "--name", "done", *SMALL, *NO_EXPORT,
                                "--space", _quickstart_without_export(storage),
                                "--set", "teacher.epochs=1", "--num-samples", "3"])
    finally:
        ray.shutdown()
    assert code == 0, printed.getvalue()[-3000:]
    exp = storage / "done"
    for name in ("trials.csv", "pareto.csv"):
        shutil.copy(exp / name, exp / f"search_{name}")
    return exp, printed.getvalue()


@pytest.fixture(scope="module")
def interrupted(finished, tmp_path_factory) -> Path:
    """A search (reusing the finished run's teacher) killed with SIGKILL — its whole session: the
    driver and the Ray processes it started — as soon as its first trial reported its first epoch
    (of KILLED_EPOCHS)."""
    storage = tmp_path_factory.mktemp("killed")
    exp = storage / "killed"
    log = open(storage / "search.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "raytune_ft.search", "--storage-path", str(storage), "--name", "killed",
         *SMALL, *NO_EXPORT, "--space", _quickstart_without_export(storage),
         "--set", f"teacher.checkpoint={finished[0] / 'teacher'}",
         "--set", f"epochs={KILLED_EPOCHS}", "--num-samples", "6", "--address", "local"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p.read_text().strip() for p in exp.glob("trial_*/result.json")):
                break
            time.sleep(0.2)
    finally:
        kill_session(proc)  # Ray may start workers while we kill; they share the session
        log.close()
    assert any(p.read_text().strip() for p in exp.glob("trial_*/result.json")), \
        (storage / "search.log").read_text()[-3000:]
    assert not session_pids(proc.pid), "processes of the killed search are still alive"
    return exp


@pytest.fixture(scope="module")
def finished_report(finished, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert analyze.main([str(finished[0]), "--out", str(out), "--export-best", "2"]) == 0
    return out


@pytest.mark.e2e
def test_read_trials_rebuilds_the_search_table_from_the_trial_folders(finished):
    exp, _ = finished
    theirs = pd.read_csv(exp / "search_trials.csv", float_precision="round_trip", dtype={"trial_id": str})
    theirs = theirs.set_index("trial_id").sort_index()
    ours = results.read_trials(exp).set_index("trial_id").sort_index()
    assert list(ours.index) == list(theirs.index) and len(ours) == 3
    for column in ("status", "val_acc", "nonzero_params", "params", "epochs_trained", "lr", "use_kd",
                   "final_sparsity", "epochs", "pruning_scope"):
        assert list(ours[column]) == list(theirs[column]), column
    assert [Path(p) for p in ours["checkpoint"]] == [Path(p) for p in theirs["checkpoint"]]
    np.testing.assert_allclose(ours["wall_time_s"], theirs["wall_time_s"])
    assert (ours["data_fraction"] == 1.0).all()  # a one-stage search trains every row on all the data


@pytest.mark.e2e
def test_report_files_front_and_export_of_a_finished_search(finished, finished_report):
    exp, out = finished[0], finished_report
    for name in ("report.html", "pareto.png", "hypervolume.png", "importance.png", "families.png",
                 "trials.csv", "pareto.csv"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "pareto.png").read_bytes().startswith(b"\x89PNG")
    front = pd.read_csv(out / "pareto.csv")
    assert list(front["trial_id"]) == list(pd.read_csv(exp / "search_pareto.csv")["trial_id"])

    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the page must not load anything"
    assert page.count('src="data:image/png;base64,') == 3  # hypervolume, importance, families
    assert "fixed reference point (1.0, 1.0)" in page and "the dense teacher's" in page
    for trial_id in front["trial_id"]:
        assert re.search(rf"<title>{trial_id} \[completed\] val_acc=[^<]*lr=", page), trial_id
    assert "needs ≥" not in page  # 3 completed trials: importances were computed
    curve_hv = pareto.hypervolume_curve(results.read_trials(exp), OBJECTIVES,
                                         pareto.hv_scales(front, OBJECTIVES, json.loads(
                                             (exp / "teacher.json").read_text())))["hypervolume"]
    assert f"<b>{curve_hv.iloc[-1]:.4f}</b>" in page and curve_hv.is_monotonic_increasing

    index = pd.read_csv(out / "export-best" / "index.csv")
    assert len(index) == min(2, len(front)) and set(index["trial_id"]) <= set(front["trial_id"])
    assert index["trial_id"].iloc[0] == front["trial_id"].iloc[0]  # the smallest is always shipped
    for _, row in index.iterrows():
        folder = out / "export-best" / row["folder"]
        manifest = "manifest.json" if row["kind"] == "export" else "checkpoint.json"
        assert (folder / manifest).is_file(), (row["kind"], sorted(os.listdir(folder)))


@pytest.mark.e2e
def test_progress_prints_counts_front_and_hypervolume_once_per_trial_event(finished):
    _, printed = finished
    lines = [ln for ln in printed.splitlines() if re.match(r"\[\d+/3 done", ln)]
    pattern = (r"\[(\d)/3 done, (\d) running, (\d) failed \| front (\d), HV (\d\.\d{4}) \| "
               r"\d+\.\d min(?:, (?:at most )?~\d+(?:\.\d)? min left)?\] "
               r"(trial \w+ (started|finished)|search finished|time left estimated from the epochs measured so far)")
    parsed = [re.match(pattern, ln) for ln in lines]
    assert all(parsed), lines
    assert [m.group(7) for m in parsed].count("finished") == 3
    # start and end of each trial, end of the search, and at most a time-left line or two (the first
    # estimate, one more per 10 quiet minutes; none when the trials end before an epoch is timed)
    estimates = sum(1 for m in parsed if m.group(6).startswith("time left"))
    assert estimates <= 2 and len(lines) == 3 + 3 + 1 + estimates
    assert "left]" in lines[-2] and "left]" not in lines[-1]  # the last trial's end has an estimate (0)
    done = [int(m.group(1)) for m in parsed if m.group(7) == "finished"]
    assert done == [1, 2, 3]
    last = parsed[-1]
    assert int(last.group(4)) >= 1 and float(last.group(5)) > 0


def test_progress_hypervolume_matches_the_report_normalisation():
    def trial(tid: str, status: str, acc: float, size: int, epoch: int = 2) -> SimpleNamespace:
        return SimpleNamespace(trial_id=tid, status=status, config={},
                               last_result={"val_acc": acc, "nonzero_params": size, "epoch": epoch})

    trials = [trial("a", "TERMINATED", 0.9, 50), trial("b", "TERMINATED", 0.8, 25),
              trial("c", "TERMINATED", 0.99, 20, epoch=1), trial("d", "RUNNING", 0.5, 10),
              trial("e", "ERROR", 0.1, 10)]
    progress = Progress(5, OBJECTIVES, teacher={"val_acc": 0.95, "nonzero_params": 100}, epochs=2)
    s = progress.summary(trials)
    # Front {a, b} (c stopped early): (0.5, 0.1) and (0.25, 0.2) against reference (1, 1).
    assert s["hypervolume"] == pytest.approx(0.9 * 0.5 + 0.8 * 0.75 - 0.8 * 0.5)
    assert (s["done"], s["running"], s["failed"], s["pending"], s["front"]) == (3, 1, 1, 0, 2)
    assert progress.summary(trials, done=trials[3])["running"] == 0  # on_trial_complete: still RUNNING
    assert Progress(5, OBJECTIVES).summary([])["hypervolume"] == 0.0  # the old signature still works


@pytest.mark.e2e
def test_report_of_an_interrupted_search(interrupted, tmp_path):
    assert not (interrupted / "trials.csv").exists()  # search never got to write it
    trials = results.read_trials(interrupted)
    # the trial that reported (two run at once: on a loaded CPU the later-started one may report first)
    reported = trials.loc[trials["epochs_trained"].idxmax()]
    assert len(trials) >= 1 and reported["status"] == "incomplete"
    assert 1 <= reported["epochs_trained"] < KILLED_EPOCHS and pd.notna(reported["val_acc"])
    assert "incomplete" in set(trials["status"]) and "completed" not in set(trials["status"])

    assert analyze.main([str(interrupted), "--out", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "<b>unfinished</b>" in page and "No completed trial yet" in page
    assert "needs ≥ 3 completed trials, has 0" in page
    assert re.search(r"<circle class=\"trial\"[^>]*fill=\"none\"", page)  # the incomplete trial, hollow
    assert pd.read_csv(tmp_path / "trials.csv")["status"].iloc[0] == "incomplete"
    assert len(pd.read_csv(tmp_path / "pareto.csv")) == 0


@pytest.mark.e2e
def test_several_experiments_share_one_plot_and_a_hypervolume_table(finished, interrupted, tmp_path):
    assert analyze.main([str(finished[0]), f"file://{interrupted}", "--out", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "Experiments compared" in page and (tmp_path / "fronts.png").is_file()
    assert (tmp_path / "done-pareto.png").is_file() and (tmp_path / "killed-pareto.png").is_file()
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert set(trials["experiment"]) == {"done", "killed"}
    # the file:// copy was read (same trials as the folder); paths name the original location
    killed = trials[trials.experiment == "killed"]
    assert len(killed) == len(results.read_trials(interrupted))
    assert killed["checkpoint"].dropna().str.startswith(f"file://{interrupted}/trial_").all()
    assert "raytune_ft-analyze-" not in (tmp_path / "trials.csv").read_text()


@pytest.mark.e2e
def test_browser_renders_the_plots_and_tables(finished_report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian package `chromium`; .ci/run installs it when "
                    "apt-get works), so the report was not opened in a browser")
    from PIL import Image

    url = (finished_report / "report.html").as_uri()
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "report.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1280,2000", url],
                   capture_output=True, timeout=90, check=True)
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=90,
                         check=True).stdout

    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (2000, 1280)
    non_white = (image < 245).any(axis=2).mean()
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    assert non_white > 0.03 and colours > 50, (non_white, colours)
    assert ((image[..., 0] > 180) & (image[..., 1] < 90)).any()  # the red front is drawn

    assert re.search(r'<body[^>]*data-images-decoded="3"', dom), dom[:300]  # every PNG decoded
    assert dom.count('<svg class="pareto"') == 1 and dom.count('class="trial') >= 3
    assert dom.count('<table class="dataframe data">') >= 4  # teacher, front, importance, effects
    front = pd.read_csv(finished_report / "pareto.csv")
    assert all(f"<td>{tid}</td>" in dom for tid in front["trial_id"])


def test_hypervolume_curve_orders_by_completion_and_normalises_by_the_teacher():
    trials = pd.DataFrame({
        "trial_id": ["a", "b", "c", "d"], "status": ["completed", "completed", "incomplete", "completed"],
        "val_acc": [0.8, 0.9, 0.99, 0.6], "nonzero_params": [20, 50, 1, 80],
        "start_time": [0.0, 1.0, 2.0, 3.0], "end_time": [30.0, 10.0, np.nan, 40.0],
    })
    scales = pareto.hv_scales(trials, OBJECTIVES, {"val_acc": 0.95, "nonzero_params": 100})
    assert scales == {"val_acc": 1.0, "nonzero_params": 100.0}
    curve = pareto.hypervolume_curve(trials, OBJECTIVES, scales, start_time=0.0)
    assert list(curve["trial_id"]) == ["b", "a", "d"]  # c never completed
    assert list(curve["elapsed_s"]) == [10.0, 30.0, 40.0]
    # (error, relative size): b (0.1, 0.5), then a (0.2, 0.2) adds 0.8 * 0.3; d (0.4, 0.8) is dominated
    assert curve["hypervolume"].tolist() == pytest.approx([0.45, 0.69, 0.69])
    assert curve["front_size"].tolist() == [1, 2, 2]
    points = pareto.normalize(trials.iloc[[0, 1]], OBJECTIVES, scales)
    assert curve["hypervolume"].iloc[-1] == pytest.approx(pareto.hypervolume(points, np.ones(2)))
    # no teacher: the largest size seen is the scale
    assert pareto.hv_scales(trials, OBJECTIVES, None)["nonzero_params"] == 80.0


def test_spread_along_front_keeps_both_ends():
    front = pd.DataFrame({"trial_id": list("abcdefg")})
    assert list(analysis.spread_along_front(front, 3)["trial_id"]) == ["a", "d", "g"]
    assert list(analysis.spread_along_front(front, 2)["trial_id"]) == ["a", "g"]
    assert list(analysis.spread_along_front(front, 10)["trial_id"]) == list("abcdefg")
    with pytest.raises(ValueError, match="N >= 1"):
        analysis.spread_along_front(front, 0)


@pytest.mark.e2e
def test_failed_and_half_written_trials_are_read_not_fatal(finished, tmp_path):
    exp = tmp_path / "copy"
    shutil.copytree(finished[0], exp, ignore=shutil.ignore_patterns("*.pt"))
    first, second = sorted(exp.glob("trial_*"))[:2]
    lines = (first / "result.json").read_text().splitlines()
    (first / "result.json").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # killed mid-write
    (second / "result.json").write_text((second / "result.json").read_text().splitlines()[0] + "\n")
    (second / "error.txt").write_text("Failure # 1 (occurred at 2026-01-01)\nTraceback ...\n"
                                      "FloatingPointError: loss became nan at epoch 2\n")
    for state in exp.glob("experiment_state-*.json"):
        state.unlink()  # Tune's state would otherwise say TERMINATED
    trials = results.read_trials(exp).set_index("trial_id")
    one, two = first.name.removeprefix("trial_"), second.name.removeprefix("trial_")
    assert trials.loc[one, "status"] == "incomplete" and trials.loc[one, "epochs_trained"] == 1
    assert trials.loc[two, "status"] == "failed"
    assert trials.loc[two, "error"] == "FloatingPointError: loss became nan at epoch 2"
    assert analyze.main([str(exp), "--out", str(tmp_path / "out")]) == 0
    assert "Failed trials" in (tmp_path / "out" / "report.html").read_text()


def test_cli_rejects_a_folder_that_is_not_an_experiment(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "raytune_ft.analyze", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "raytune_ft.analyze", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "neither space.json nor trial_* folders" in proc.stderr


def test_importing_analyze_does_no_work():
    code = ("import sys, raytune_ft.analyze, raytune_ft.report.results; "
            "assert not {'matplotlib', 'optuna', 'ray', 'torch'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def _synthetic_experiment(tmp_path: Path, n: int = 16) -> results.Experiment:
    """Hand-built rows: accuracy depends on use_kd (+0.1) and lr, size only on final_sparsity."""
    rng = np.random.default_rng(0)
    lr, sparsity = rng.uniform(1e-3, 1e-2, n), rng.uniform(0.5, 0.9, n)
    use_kd = np.arange(n) % 2 == 0
    trials = pd.DataFrame({
        "trial_id": [f"t{i}" for i in range(n)], "status": "completed", "lr": lr, "use_kd": use_kd,
        "final_sparsity": sparsity, "val_acc": 0.7 + 0.1 * use_kd + 5 * lr,
        "nonzero_params": ((1 - sparsity) * 1e6).round(), "start_time": np.arange(n) * 10.0,
        "end_time": np.arange(n) * 10.0 + 9})
    return results.Experiment(
        name="synthetic", location=str(tmp_path), local_dir=tmp_path, objectives=dict(OBJECTIVES),
        params=["lr", "use_kd", "final_sparsity"], space_file=None, planned=n, teacher=None, trials=trials,
        state="finished", last_update=0.0, start_time=0.0, pending=0)


def test_importances_follow_each_objective(tmp_path):
    table, note = analysis.param_importances(_synthetic_experiment(tmp_path))
    assert table["val_acc"].idxmax() == "use_kd"
    assert table["nonzero_params"].idxmax() == "final_sparsity" and table["nonzero_params"].max() > 0.8
    assert "16 completed trials" in note
    table, note = analysis.param_importances(_synthetic_experiment(tmp_path, n=2))
    assert table is None and note == "needs ≥ 3 completed trials, has 2"


def test_family_effects_compare_at_equal_size(tmp_path):
    effects, bins = analysis.family_effects(_synthetic_experiment(tmp_path))
    assert bins == 4
    kd = effects[effects.parameter == "use_kd"].iloc[0]
    assert kd["family"] == "distillation" and kd["n"] == "8 vs 8" and 0.05 < kd["effect"] < 0.15
    lr = effects[effects.parameter == "lr"].iloc[0]
    assert lr["family"] == "optimization" and lr["effect"] > 0 and lr["measure"] == "Spearman ρ"


@pytest.mark.e2e
def test_export_best_prefers_the_exported_folder(finished, tmp_path):
    exp = tmp_path / "copy"
    shutil.copytree(finished[0], exp)
    front = pd.read_csv(exp / "search_pareto.csv")
    smallest = exp / f"trial_{front['trial_id'].iloc[0]}"
    export = sorted(smallest.glob("checkpoint_*"))[-1] / "export"
    export.mkdir()
    (export / "manifest.json").write_text(json.dumps({"trial": front["trial_id"].iloc[0]}))
    (export / "model.pt2").write_bytes(b"exported program")
    out = tmp_path / "out"
    assert analyze.main([str(exp), "--out", str(out), "--export-best", "5"]) == 0
    index = pd.read_csv(out / "export-best" / "index.csv")
    assert len(index) == len(front)  # fewer front models than asked: all of them
    first = index.iloc[0]
    assert first["kind"] == "export" and first["source"] == str(export)
    assert (out / "export-best" / first["folder"] / "model.pt2").read_bytes() == b"exported program"
    assert set(index["kind"].iloc[1:]) <= {"checkpoint"}
    assert json.loads((out / "export-best" / "index.json").read_text())[0]["trial_id"] == first["trial_id"]
    page = (out / "report.html").read_text()
    assert str(export) in page  # the front table names the exported model


@pytest.mark.e2e
def test_report_of_a_search_killed_before_any_trial_reported(finished, tmp_path):
    exp = tmp_path / "early"
    (exp / "trial_0001").mkdir(parents=True)
    for name in ("space.json", "teacher.json"):
        shutil.copy(finished[0] / name, exp / name)
    params = next(finished[0].glob("trial_*/params.json"))
    shutil.copy(params, exp / "trial_0001" / "params.json")  # Tune writes this when a trial starts
    trials = results.read_trials(exp)
    assert list(trials["status"]) == ["incomplete"] and trials["val_acc"].isna().all()
    assert analyze.main([str(exp), "--out", str(tmp_path / "out")]) == 0
    shutil.rmtree(exp / "trial_0001")  # killed while the teacher was training
    assert len(results.read_trials(exp)) == 0
    assert analyze.main([str(exp), "--out", str(tmp_path / "out")]) == 0
    assert "0 trials started of 3 planned" in (tmp_path / "out" / "report.html").read_text()
