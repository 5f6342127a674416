"""End-to-end: the CLI through a real local Ray cluster, on a digits subset; and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from raytune_ft import checkpoints, data, layout, models, search, train
from raytune_ft.config import TrialConfig
from raytune_ft.families import pruning

LATENCY_BUDGET_S = 0.05  # seconds of ORT timing per exported file (quickstart: 0.5, the default: 5)
# teacher.model: the quickstart's teacher is Lite2; this suite compares the teacher with a dense
# student of its own architecture (the first trial, nsga2 seed 0 without the seeded recipes, is a Lite1)
SMALL = ["--set", "max_samples=240", "--set", "epochs=2", "--set", "image_size=32",
         "--set", "search.sampler=nsga2", "--set", "search.initial=[]",
         # one trial at a time: trials.csv lists trials by start time, and two trials started
         # together (the quickstart's max_concurrent 2) may swap rows between two runs
         "--set", "search.max_concurrent=1", "--set", "cpus_per_trial=2",
         # the teacher-quality gate reads the teacher's val_acc, which a fitted teacher records from
         # training and a loaded one from a fresh evaluation: keep it out of the seed's reproducibility
         "--set", "search.kd_gate=keep",
         "--set", "teacher.epochs=1", "--set", "teacher.model=efficientnet_lite1", "--num-samples", "3",
         # latency is measured but no test here checks its value: time the least the budget allows
         # (export.ort_latency_many still runs its minimum rounds), here and after the search
         "--set", f"latency_budget_s={LATENCY_BUDGET_S}"]
PARAM_COLUMNS = ["lr", "use_kd", "kd_alpha", "final_sparsity", "pruning_end"]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def first_run(ray_cluster, tmp_path_factory):
    storage = tmp_path_factory.mktemp("results")
    assert search.main(["--storage-path", str(storage), "--name", "a", *SMALL]) == 0
    return storage / "a"


@pytest.mark.e2e
def test_search_writes_trials_front_plot_and_teacher(first_run):
    for name in ("trials.csv", "pareto.csv", "pareto.png", "teacher.json"):
        assert (first_run / name).stat().st_size > 0, name
    trials = pd.read_csv(first_run / "trials.csv")
    assert len(trials) == 3 and set(trials["status"]) == {"completed"}
    assert (trials["pruning_scope"] == "global").all() and (trials["epochs"] == 2).all()  # fixed settings too
    for column in ("trial_id", "status", *PARAM_COLUMNS, "val_acc", "nonzero_params", "params",
                   "epochs_trained", "wall_time_s", "checkpoint"):
        assert column in trials.columns, column
    assert (trials["epochs_trained"] == 2).all()
    teacher = json.loads((first_run / "teacher.json").read_text())
    assert teacher["params"] == trials["params"].iloc[0]
    assert Path(teacher["checkpoint"], layout.CHECKPOINT_WEIGHTS).is_file()


@pytest.mark.e2e
def test_front_is_non_dominated_and_checkpoints_reproduce_metrics_exactly(first_run):
    from raytune_ft.deploy import export

    trials = pd.read_csv(first_run / "trials.csv")
    front = pd.read_csv(first_run / "pareto.csv")
    size = "model_bytes_compressed"  # the quickstart's size objective (issue 13: the shipped file, gzip)
    assert len(front) >= 1 and (front["status"] == "completed").all()
    assert list(front[size]) == sorted(front[size])
    for _, row in front.iterrows():
        better = trials[(trials.val_acc >= row.val_acc) & (trials[size] <= row[size])
                        & ((trials.val_acc > row.val_acc) | (trials[size] < row[size]))]
        assert better.empty, f"{row.trial_id} is dominated by {list(better.trial_id)}"

        model, meta = checkpoints.load_checkpoint(row.checkpoint)
        cfg = TrialConfig.from_dict(meta["config"])
        splits = data.load_splits(cfg)
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        x_val = splits.x_val.contiguous(memory_format=memory_format)
        model.to(memory_format=memory_format)
        torch_acc = row.val_acc_fp32 if cfg.use_quantization else row.val_acc  # int8: val_acc is the ORT file's
        assert train.evaluate(model, x_val, splits.y_val)["val_acc"] == torch_acc
        deployed = Path(row.export_path) / json.loads((Path(row.export_path) / layout.MANIFEST).read_text())["deployed"]
        assert deployed.name == (layout.INT8_FILE if cfg.use_quantization else layout.ONNX_FILE)
        assert export.onnx_weight_counts(deployed)[1] == row.nonzero_params
        sizes = pruning.size_metrics(model, pruning.prunable_parameters(model, models.head_parameter_names(model)))
        assert sizes["sparsity"] == pytest.approx(cfg.final_sparsity, abs=1e-6)


@pytest.mark.e2e
def test_same_seed_samples_the_same_configurations(first_run):
    storage = first_run.parent
    teacher = str(first_run / "teacher")  # reuse the teacher: only the sampling is under test
    assert search.main(["--storage-path", str(storage), "--name", "b", *SMALL,
                        "--set", f"teacher.checkpoint={teacher}"]) == 0
    a = pd.read_csv(first_run / "trials.csv")[PARAM_COLUMNS]
    b = pd.read_csv(storage / "b" / "trials.csv")[PARAM_COLUMNS]
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.e2e
def test_a_diverging_trial_fails_and_the_search_goes_on(first_run, tmp_path):
    # export: false: a failed trial is a training failure (NaN loss), and nothing here reads an
    # exported file; exporting, int8 and timing (the default 5 s latency budget, then every file
    # re-timed after the search) the completed trials and the teacher's baselines cost ~40 s
    space = tmp_path / "diverge.yaml"
    space.write_text(f"""
name: diverge
fixed: {{dataset: digits, max_samples: 240, epochs: 1, image_size: 32, use_pruning: true, cpus_per_trial: 2,
        export: false}}
teacher: {{checkpoint: {first_run / 'teacher'}}}
search: {{sampler: random, num_samples: 3, seed: 1}}
params:
  lr: {{type: categorical, choices: [0.002, 1.0e+30]}}
  final_sparsity: {{type: float, low: 0.5, high: 0.9}}
objectives: {{val_acc: max, nonzero_params: min}}
""")
    assert search.main(["--space", str(space), "--storage-path", str(tmp_path), "--name", "d"]) == 0
    trials = pd.read_csv(tmp_path / "d" / "trials.csv")
    failed = trials[trials["status"] == "failed"]
    assert len(trials) == 3
    assert set(failed["lr"]) == {1e30} and (trials.loc[trials.lr == 0.002, "status"] == "completed").all()
    assert failed["error"].str.contains("loss became").all()
    front = pd.read_csv(tmp_path / "d" / "pareto.csv")
    assert not set(front["trial_id"]) & set(failed["trial_id"])


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raytune_ft.search", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args, setup, message",
    [
        (["--space", "bad.yaml"], lambda d: (d / "bad.yaml").write_text("name: [unclosed\n"), "bad.yaml"),
        (["--set", "epochz=2"], None, "unknown key 'epochz'; did you mean 'epochs'"),
        (["--set", "teacher.model=efficientnet_lite_0"], None, "unknown model 'efficientnet_lite_0'"),
        (["--set", "dataset=imagefolder", "--set", "data_root=/no/such/folder"], None,
         "data_root '/no/such/folder' does not exist"),
        (["--space", "nope"], None, "space file 'nope' not found; give a path or one of:"),
        (["--name", "taken"], lambda d: (d / "ray_results" / "taken").mkdir(parents=True),
         "already exists; pass --resume"),
    ],
)
def test_bad_input_exits_before_ray_with_one_clear_line(tmp_path, args, setup, message):
    if setup:
        setup(tmp_path)
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


@pytest.mark.e2e
def test_exported_front_models_reload_without_raytune_ft_and_match_the_reported_numbers(first_run, tmp_path):
    front = pd.read_csv(first_run / "pareto.csv")
    cfg = TrialConfig.from_dict(json.loads((Path(front.checkpoint[0]) / layout.CHECKPOINT_META).read_text())["config"])
    splits = data.load_splits(cfg)
    torch.save({"x": splits.x_val, "y": splits.y_val}, tmp_path / "val.pt")
    np_val = tmp_path / "val.npz"
    import numpy as np

    np.savez(np_val, x=splits.x_val.numpy(), y=splits.y_val.numpy())
    # issue 13: the numbers are those of the deployed file (manifest "deployed"), run in ONNX Runtime
    code = """
import json, os, sys, numpy as np, onnxruntime as ort
path, val = sys.argv[1], np.load(sys.argv[2])
manifest = json.load(open(os.path.join(path, "manifest.json")))
session = ort.InferenceSession(os.path.join(path, manifest["deployed"]), providers=["CPUExecutionProvider"])
pred = session.run(None, {"images": val["x"]})[0].argmax(1)
print(json.dumps({
    "val_acc": float((pred == val["y"]).mean()),
    "model_bytes": os.path.getsize(os.path.join(path, manifest["deployed"])),
    "class_names": manifest["class_names"],
    "raytune_ft_imported": any(m.split(".")[0] in ("raytune_ft", "torch") for m in sys.modules),
}))
"""
    from raytune_ft.deploy import export

    for _, row in front.iterrows():
        proc = subprocess.run([sys.executable, "-c", code, row.export_path, str(np_val)],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout)
        assert not got["raytune_ft_imported"]
        assert got["class_names"] == list(splits.class_names)
        deployed = Path(row.export_path) / json.loads((Path(row.export_path) / "manifest.json").read_text())["deployed"]
        assert export.onnx_weight_counts(deployed) == (row.params, row.nonzero_params)
        assert got["model_bytes"] == row.model_bytes
        # fp32: training evaluated NHWC in torch, the file runs in ORT: allow one image of float noise
        assert abs(got["val_acc"] - row.val_acc) <= 1 / len(splits.y_val) + 1e-9


@pytest.mark.e2e
def test_structured_space_ships_a_smaller_exported_model(first_run, tmp_path):
    teacher = str(first_run / "teacher")
    assert search.main(["--space", "quickstart_structured", "--storage-path", str(tmp_path), "--name", "s",
                        "--set", "max_samples=240", "--set", "epochs=2", "--set", f"teacher.checkpoint={teacher}",
                        "--set", "channel_pruning_ratio=0.5", "--num-samples", "2"]) == 2  # searched: refused
    assert search.main(["--space", "quickstart_structured", "--storage-path", str(tmp_path), "--name", "s",
                        "--set", "max_samples=240", "--set", "epochs=2", "--set", f"teacher.checkpoint={teacher}",
                        "--set", f"latency_budget_s={LATENCY_BUDGET_S}", "--num-samples", "3"]) == 0
    trials = pd.read_csv(tmp_path / "s" / "trials.csv")
    info = json.loads((tmp_path / "s" / "teacher.json").read_text())
    assert (trials.status == "completed").all()
    # the space's third recipe: quantization-aware fine-tuning, shipped as the int8 file it trained for
    qat = trials[trials.quant_aware_fraction == 0.25]
    assert len(qat) == 1 and qat.use_quantization.all() and qat.val_acc_fp32.notna().all()  # int8 val_acc in ORT
    assert (qat.model_bytes < 0.5 * trials[~trials.use_quantization].model_bytes.min()).all()
    assert trials.pruning_method.str.startswith("channel").all()
    assert (trials.model_bytes < 0.7 * info["model_bytes"]).all()
    assert (trials.macs < 0.7 * info["macs"]).all()
    front = pd.read_csv(tmp_path / "s" / "pareto.csv")
    assert list(front.model_bytes) == sorted(front.model_bytes)


def test_help_lists_every_built_in_space_with_its_description(capsys):
    from raytune_ft.space import spaces

    with pytest.raises(SystemExit):
        search.parse_args(["--help"])
    out = capsys.readouterr().out
    for name in spaces.builtin_space_names():
        description = " ".join(spaces.load_space(spaces.builtin_space_path(name)).description.split())
        assert f"  {name}: {description[:20]}" in out, name
