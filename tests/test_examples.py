"""The analysis scripts in examples/, run as a user runs them (a fresh Python process) on the shared
small search (`readme_run`) and on a second experiment made from it (the same folder without one
of its trials); their printed numbers are checked against raytune_ft.pareto and the API."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import raytune_ft
from raytune_ft import layout, pareto

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def second(readme_run, tmp_path_factory) -> Path:
    """The shared experiment without one of its trials (no weights: these scripts read tables)."""
    folder = tmp_path_factory.mktemp("second") / "second"
    shutil.copytree(readme_run.path, folder, ignore=shutil.ignore_patterns("*.pt", "*.pt2", "*.onnx", "mlflow.db"))
    dropped = sorted(folder.glob("trial_*"))[0]
    shutil.rmtree(dropped)
    return folder


def _hypervolume(exp: raytune_ft.Experiment, scales: dict) -> float:
    return pareto.hypervolume(pareto.normalize(exp.front, exp.objectives, scales), np.ones(len(scales)))


@pytest.mark.e2e
def test_compare_fronts_reports_each_hypervolume_and_the_joint_front(readme_run, second, tmp_path):
    proc = _run("compare_fronts.py", readme_run.path, second, "--plot", tmp_path / "fronts.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    a, b = raytune_ft.open_experiment(readme_run.path), raytune_ft.open_experiment(second)
    scales = pareto.hv_scales(pd.concat([a.trials, b.trials]), a.objectives, a.teacher.iloc[0].to_dict())
    for exp in (a, b):
        assert f"{exp.name}: {len(exp.trials)} trials, {len(exp.front)} on the front, " \
               f"hypervolume {_hypervolume(exp, scales):.4f}" in proc.stdout
    assert _hypervolume(a, scales) >= _hypervolume(b, scales)  # b is a without one trial
    joint = pareto.pareto_front(pd.concat([a.front, b.front]), a.objectives)
    assert f"joint front: {len(joint)} models" in proc.stdout
    assert (tmp_path / "fronts.png").stat().st_size > 0


@pytest.mark.e2e
def test_smallest_within_one_point_ships_a_folder_that_predicts_with_onnxruntime_alone(readme_run, tmp_path):
    exp = readme_run.variables["exp"]
    teacher = exp.teacher["val_acc"].iloc[0]
    close = exp.front[exp.front["val_acc"] >= teacher - 0.01]
    proc = _run("smallest_within_one_point.py", readme_run.path, tmp_path / "one", cwd=tmp_path)
    if len(close):  # a 1-epoch search: its students may all be more than a point below the teacher
        assert proc.returncode == 0 and f"trial {close['trial_id'].iloc[0]}:" in proc.stdout, proc.stderr
    else:
        assert proc.returncode == 1 and "no front model has val_acc >=" in proc.stdout, proc.stderr
    proc = _run("smallest_within_one_point.py", readme_run.path, tmp_path / "any", "--points", "100", cwd=tmp_path)
    smallest = exp.front.iloc[0]
    assert proc.returncode == 0 and f"trial {smallest['trial_id']}:" in proc.stdout, proc.stderr
    shipped = tmp_path / "any"
    manifest = json.loads((shipped / layout.MANIFEST).read_text())
    assert sorted(p.name for p in shipped.iterdir()) == sorted([layout.MANIFEST, manifest["deployed"], "predict.py"])

    from sklearn.datasets import load_digits

    session, preprocess = exp.session(smallest["trial_id"])
    grey = load_digits().images[:16, None] / 16.0
    images = np.repeat(grey, 3, axis=1).astype(np.float32)  # (16, 3, 8, 8)
    import torch

    sized = torch.nn.functional.interpolate(torch.from_numpy(images), size=preprocess.input_size[1:],
                                            mode="bilinear", align_corners=False).numpy()  # as the search resized
    np.save(tmp_path / "images.npy", sized)
    expected = preprocess.labels(session.run(None, {session.get_inputs()[0].name: preprocess(images)})[0])
    # run predict.py as a script, and say whether it imported more than onnxruntime and numpy
    code = ("import runpy, sys; sys.argv = [sys.argv[1], sys.argv[2]]; runpy.run_path(sys.argv[0], "
            "run_name='__main__'); print('imported:', sorted({'torch', 'raytune_ft', 'pandas'} & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code, str(shipped / "predict.py"), str(tmp_path / "images.npy")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    *labels, imported = proc.stdout.strip().splitlines()
    assert labels == expected and imported == "imported: []"


@pytest.mark.e2e
def test_hypervolume_vs_time_plots_one_curve_per_experiment(readme_run, second, tmp_path):
    proc = _run("hypervolume_vs_time.py", readme_run.path, second, "--out", tmp_path / "hv.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    exps = [raytune_ft.open_experiment(readme_run.path), raytune_ft.open_experiment(second)]
    scales = pareto.hv_scales(pd.concat([e.trials for e in exps]), exps[0].objectives,
                              exps[0].teacher.iloc[0].to_dict())
    for exp in exps:
        curve = pareto.hypervolume_curve(exp.trials, exp.objectives, scales, exp.start_time)
        assert list(curve["hypervolume"]) == sorted(curve["hypervolume"])  # it never falls
        last = curve.iloc[-1]
        assert f"{exp.name}: hypervolume {last['hypervolume']:.4f} after {len(curve)} completed trials" in proc.stdout
        assert last["hypervolume"] == pytest.approx(_hypervolume(exp, scales))
    assert (tmp_path / "hv.png").stat().st_size > 0
