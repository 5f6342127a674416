"""Tests for raytune_ft.train.teachers and the teacher section of a space: the teacher as its own model
(architecture, normalization, input size), its view of the students' rows, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from raytune_ft import checkpoints, data, models
from raytune_ft.config import TrialConfig
from raytune_ft.space.spaces import SpaceError, load_space
from raytune_ft.train import teachers

STUDENT = models.InputConfig((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
TEACHER = models.InputConfig((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _normalize(pixels: torch.Tensor, inp: models.InputConfig) -> torch.Tensor:
    return (pixels - torch.tensor(inp.mean).view(1, 3, 1, 1)) / torch.tensor(inp.std).view(1, 3, 1, 1)


def test_teacher_input_turns_the_student_view_into_the_teachers():
    """The wrapped teacher receives the same pixels normalized with its own statistics, at its size."""
    pixels = torch.rand(2, 3, 16, 16)
    seen = {}

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen["x"] = x
            return x.mean(dim=(2, 3))

    same_size = teachers.TeacherInput(Probe(), student=STUDENT, teacher_input=TEACHER, image_size=16)
    same_size(_normalize(pixels, STUDENT))
    torch.testing.assert_close(seen["x"], _normalize(pixels, TEACHER))

    larger = teachers.TeacherInput(Probe(), student=STUDENT, teacher_input=TEACHER, image_size=24)
    larger(_normalize(pixels, STUDENT))
    expected = nn.functional.interpolate(_normalize(pixels, TEACHER), size=(24, 24), mode="bilinear",
                                         align_corners=False)
    assert seen["x"].shape == (2, 3, 24, 24)
    torch.testing.assert_close(seen["x"], expected)

    identity = teachers.TeacherInput(Probe(), student=STUDENT, teacher_input=STUDENT, image_size=16)
    x = _normalize(pixels, STUDENT)
    identity(x)
    assert seen["x"] is x  # nothing to convert: the batch goes through untouched


def test_teacher_splits_are_the_students_rows_in_the_teachers_input_size():
    """The teacher's view is loaded again at its size from the same rows: labels equal row by row,
    and each teacher image downsampled is close to the student's image of the same row."""
    student_cfg = TrialConfig(dataset="digits", max_samples=100, image_size=16)
    students = data.load_splits(student_cfg)
    teacher_cfg = TrialConfig(dataset="digits", max_samples=100, image_size=32, model="efficientnet_lite2")
    view = teachers.teacher_splits(students, teacher_cfg)
    assert view.x_train.shape[1:] == (3, 32, 32)
    assert torch.equal(view.y_train, students.y_train) and torch.equal(view.y_val, students.y_val)
    shrunk = nn.functional.interpolate(view.x_train, size=(16, 16), mode="bilinear", antialias=True)
    same_row = (shrunk - students.x_train).abs().mean()
    other_row = (shrunk - students.x_train.roll(1, dims=0)).abs().mean()
    assert same_row < 0.5 * other_row
    assert teachers.teacher_splits(students, TrialConfig(dataset="digits", max_samples=100, image_size=16,
                                                         model="efficientnet_lite2")) is students
    with pytest.raises(AssertionError, match="does not hold the students' images in their order"):
        teachers.teacher_splits(students, TrialConfig(dataset="digits", max_samples=100, image_size=32,
                                                      data_seed=1))


def test_online_teacher_is_the_teachers_architecture_behind_the_adapter():
    cfg = TrialConfig(model="efficientnet_lite2", image_size=40, weights="none")
    net = models.build_model(cfg.model, 3, weights="none").eval()
    wrapped = teachers.build_online_teacher({"config": cfg.to_dict(), "state_dict": net.state_dict()},
                                      TrialConfig(model="efficientnet_lite0", image_size=32), 3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = net(nn.functional.interpolate(x, size=(40, 40), mode="bilinear", align_corners=False))
        torch.testing.assert_close(wrapped(x), expected)
    assert not wrapped.training


# --- the teacher section of a space -------------------------------------------------------------

SPACE = """\
name: t
fixed: {{epochs: 2, model: efficientnet_lite0}}
teacher: {teacher}
params:
{params}
objectives: {{val_acc: max, nonzero_params: min}}
"""
LR = "  lr: {type: float, low: 1.0e-3, high: 1.0e-2}"
MODEL = "  model: {type: categorical, choices: [efficientnet_lite0, efficientnet_lite1]}"


def _space(tmp_path: Path, teacher: str, params: str = LR, fixed_model: bool = True) -> Path:
    text = SPACE.format(teacher=teacher, params=params)
    if not fixed_model:
        text = text.replace(", model: efficientnet_lite0", "")
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def test_teacher_section_takes_its_own_model_weights_and_settings(tmp_path):
    space = load_space(_space(tmp_path, "{model: efficientnet_lite2, epochs: 4, lr: 0.005, image_size: 48}"))
    cfg = space.teacher_config()
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.image_size, cfg.weights) == ("efficientnet_lite2", 4, 0.005, 48,
                                                                            "pretrained")
    assert space.trial_config({"lr": 0.002}).model == "efficientnet_lite0"  # students keep theirs
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    own = load_space(_space(tmp_path, "{model: efficientnet_lite2}").parent / "s.yaml")
    assert own.with_overrides([f"weights={weights}"]).teacher_config().weights == "pretrained"  # not the students'
    assert space.with_overrides(["teacher.model=resnet18"]).teacher_config().model == "resnet18"


@pytest.mark.parametrize("teacher, params, fixed_model, message", [
    ("{max_samples: 100}", LR, True, "teacher.max_samples: the teacher sees the students' images"),
    ("{epochs: 2, overrides: {epochs: 3}}", LR, True, "teacher.epochs: set both"),
    ("{use_kd: true}", LR, True, "teacher.use_kd: use_kd cannot be overridden"),
    ("{epochs: 2}", MODEL, False, "teacher.model: required when the students' model is searched"),
])
def test_bad_teacher_sections_name_the_key(tmp_path, teacher, params, fixed_model, message):
    with pytest.raises(SpaceError, match=message):
        load_space(_space(tmp_path, teacher, params, fixed_model))


def test_two_architecture_students_with_a_conditioned_param(tmp_path):
    params = MODEL + "\n  final_sparsity: {type: float, low: 0.5, high: 0.9, when: {model: efficientnet_lite1}}"
    space = load_space(_space(tmp_path, "{model: efficientnet_lite2}", params, fixed_model=False))
    assert space.params[0].choices == ("efficientnet_lite0", "efficientnet_lite1")
    assert space.params[1].when == {"model": ("efficientnet_lite1",)}


# --- checks before Ray starts -------------------------------------------------------------------


def test_class_difference_names_what_differs():
    text = teachers.class_difference(["a", "b", "x"], ["a", "b", "c"])
    assert "['c'] are not among the teacher's" in text and "['x'] are not in the dataset" in text


def _foreign_checkpoint(folder: Path) -> Path:
    """A raytune_ft checkpoint of a 3-class teacher (digits has 10)."""
    model = models.build_model("efficientnet_lite0", 3, weights="none")
    checkpoints.save_checkpoint(folder, model, config=TrialConfig().to_dict(), class_names=("cat", "dog", "0"),
                                metrics={})
    return folder


@pytest.mark.parametrize("args, message", [
    (["--set", "teacher.model=efficientnet_lite9"],
     "teacher.model: unknown model 'efficientnet_lite9'; close matches: efficientnet_lite"),
    (["--set", "teacher.checkpoint={ckpt}"],
     "teacher.checkpoint: '{ckpt}' was trained on other classes than the dataset: the dataset's ['1', '2'"),
    (["--space", "{space}"], "params.model: 'resnet18': no local pretrained weights for 'resnet18'"),
])
def test_bad_teacher_or_student_input_is_one_line_before_ray(tmp_path, args, message):
    ckpt = _foreign_checkpoint(tmp_path / "ckpt")
    space = tmp_path / "two.yaml"
    space.write_text(SPACE.format(teacher="{model: efficientnet_lite2}", params=MODEL.replace(
        "efficientnet_lite1", "resnet18")).replace(", model: efficientnet_lite0", ""))
    args = [a.format(ckpt=ckpt, space=space) for a in args]
    env_home = tmp_path / "home"  # empty caches: resnet18 has no local weights
    proc = subprocess.run([sys.executable, "-m", "raytune_ft.search", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=180,
                          env={**os.environ, "HF_HOME": str(env_home), "TORCH_HOME": str(env_home)})
    assert proc.returncode == 2, proc.stderr
    assert message.format(ckpt=ckpt) in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


# --- end to end: students of two architectures, a Lite2 teacher of its own input size -------------

TWO_ARCH = """\
name: two_arch
fixed: {{dataset: digits, max_samples: 400, image_size: 32, epochs: 2, batch_size: 32, lr: 5.0e-3,
        cpus_per_trial: 2, latency_budget_s: 0.05, crop_min_scale: 0.5, use_kd: true}}
teacher: {{model: efficientnet_lite2, image_size: 48, epochs: 1}}
search: {{sampler: random, num_samples: 2, seed: {seed}}}
params:
  model: {{type: categorical, choices: [efficientnet_lite0, efficientnet_lite1]}}
  # Lite0 students are pruned hard (small, less accurate), Lite1 students stay dense and see
  # augmented batches, so they distil from the online teacher (resized 32 -> 48 px)
  use_pruning: {{type: categorical, choices: [true], when: {{model: efficientnet_lite0}}}}
  final_sparsity: {{type: categorical, choices: [0.95], when: {{model: efficientnet_lite0}}}}
  augment: {{type: categorical, choices: [true], when: {{model: efficientnet_lite1}}}}
objectives: {{val_acc: max, nonzero_params: min}}
"""


@pytest.mark.e2e
def test_students_of_two_architectures_share_one_front_and_reload(tmp_path):
    """One search: a Lite2 teacher at 48 px (its own view, precomputed logits for the Lite0
    students, the online teacher behind TeacherInput for the augmented Lite1 students); the front
    holds points of both architectures, each non-dominated, each exported and reloadable."""
    import pandas as pd
    import ray

    from raytune_ft import search

    space = tmp_path / "two.yaml"
    # seed 0 samples lite1, then lite0: one student of each architecture is all the front needs
    # (a third trial, lite1 again, added ~30 s and nothing the assertions use)
    space.write_text(TWO_ARCH.format(seed=0))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert search.main(["--space", str(space), "--storage-path", str(tmp_path), "--name", "x"]) == 0
    finally:
        ray.shutdown()
    exp = tmp_path / "x"
    trials = pd.read_csv(exp / "trials.csv")
    assert (trials.status == "completed").all() and len(trials) == 2  # num_samples
    assert set(trials.model) == {"efficientnet_lite0", "efficientnet_lite1"}
    info = json.loads((exp / "teacher.json").read_text())
    assert (info["model"], info["image_size"]) == ("efficientnet_lite2", 48)
    assert len(torch.load(exp / "teacher" / "train_logits.pt", weights_only=True)) == len(
        data.load_splits(TrialConfig(max_samples=400)).y_train)

    front = pd.read_csv(exp / "pareto.csv")
    assert set(front.model) == {"efficientnet_lite0", "efficientnet_lite1"}, front[["model", "val_acc"]]
    for _, row in front.iterrows():
        better = trials[(trials.val_acc >= row.val_acc) & (trials.nonzero_params <= row.nonzero_params)
                        & ((trials.val_acc > row.val_acc) | (trials.nonzero_params < row.nonzero_params))]
        assert better.empty, f"{row.trial_id} is dominated by {list(better.trial_id)}"
        model, meta = checkpoints.load_checkpoint(row.checkpoint)
        assert meta["config"]["model"] == row.model
        splits = data.load_splits(TrialConfig.from_dict(meta["config"]))
        program = torch.export.load(str(Path(row.export_path) / "model.pt2"))
        # the checkpoint and the exported program are the same network (row.params counts the
        # deployed ONNX file since issue 13: BatchNorm folded into the convolutions)
        assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in program.parameters())
        with torch.no_grad():
            acc = (program.module()(splits.x_val).argmax(1) == splits.y_val).float().mean().item()
        assert abs(acc - row.val_acc) <= 1 / len(splits.y_val) + 1e-9
        manifest = json.loads((Path(row.export_path) / "manifest.json").read_text())
        assert manifest["config"]["model"] == row.model


def test_online_teacher_sees_its_own_centre_crop_of_images_decoded_from_files(tmp_path):
    """Files decoded for compact-CNN students keep the whole image (crop 1.0); a Lite0 teacher was
    fine-tuned on its own 0.875 centre crop. In online distillation it must see that crop of each
    student batch, not the whole image: the adapter's output matches the teacher's own decode of
    the same files far better than the uncropped batch does (which is what it was fed before)."""
    from PIL import Image

    from raytune_ft.data import images

    rng = np.random.default_rng(0)
    files = []
    for i in range(6):  # smooth random images: structure at every scale, so a mis-scaled view differs
        coarse = rng.uniform(0, 255, (6, 6, 3)).astype(np.uint8)
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(coarse).resize((28, 28), Image.BICUBIC).save(files[-1])
    lite0, cnn = models.input_config("efficientnet_lite0"), models.input_config("compact_cnn_16")
    assert lite0.crop_pct == 0.875 and cnn.crop_pct == 1.0

    def view(mean, std, interpolation, crop):
        inp = models.InputConfig(mean, std, interpolation, crop)
        decoded = np.stack([images.decode_image(f, 28, inp) for f in files]).transpose(0, 3, 1, 2)
        return images.to_model_input(decoded, 28, inp)

    student_batch = view(cnn.mean, cnn.std, cnn.interpolation, 1.0)  # how the students' data was decoded
    uncropped = view(lite0.mean, lite0.std, cnn.interpolation, 1.0)  # the same pixels in the teacher's stats
    teacher_own = view(lite0.mean, lite0.std, lite0.interpolation, lite0.crop_pct)  # the teacher's decode
    seen = {}

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen["x"] = x
            return x.mean(dim=(2, 3))

    cfg = TrialConfig(model="efficientnet_lite0", image_size=28, weights="none")
    net = models.build_model(cfg.model, 3, weights="none")
    wrapped = teachers.build_online_teacher({"config": cfg.to_dict(), "state_dict": net.state_dict()},
                                            TrialConfig(model="compact_cnn_16", image_size=28), 3,
                                            decode_view=(1.0, cnn.interpolation))
    assert wrapped.crop == pytest.approx(0.875)
    wrapped.teacher = Probe()
    with torch.no_grad():
        wrapped(student_batch)
    uncropped_error = (uncropped - teacher_own).abs().mean()
    cropped_error = (seen["x"] - teacher_own).abs().mean()
    assert seen["x"].shape == teacher_own.shape
    assert cropped_error < 0.1 * uncropped_error, (cropped_error, uncropped_error)
    arrays = teachers.build_online_teacher({"config": cfg.to_dict(), "state_dict": net.state_dict()},
                                           TrialConfig(model="compact_cnn_16", image_size=28), 3)
    assert arrays.crop == 1.0  # arrays (no decode_view) are not cropped by anyone
    with pytest.raises(ValueError, match="crop must be in"):
        teachers.TeacherInput(Probe(), student=STUDENT, teacher_input=TEACHER, image_size=16, crop=1.5)
