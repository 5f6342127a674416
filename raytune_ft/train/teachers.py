"""The distillation teacher as its own model: its input view of the students' images, the online
teacher's input adapter, and the checks of a space's teacher and student architectures.

The teacher (a space's `teacher:` section, or `teacher.checkpoint`) may be another architecture
than the students, with its own normalization and input size. It is fine-tuned, evaluated and its
train-set logits computed on `teacher_splits`: the same images in the same order as the students'
split (same data settings and data_seed; the labels are compared), in the teacher's own input
pipeline — so precomputed logits are looked up by sample index exactly. The online teacher (with
augmentation or a streamed dataset) gets the student's batch through `TeacherInput`, which turns
the student's view into the teacher's (renormalize, resize).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raytune_ft import checkpoints, models
from raytune_ft import data as data_mod
from raytune_ft.config import TrialConfig
from raytune_ft.data import Splits, views


class TeacherInput(nn.Module):
    """`teacher(adapt(x))` for a batch `x` in the student's view: normalized with (mean_s, std_s)
    at the student's size. adapt(x) = x · std_s/std_t + (mean_s − mean_t)/std_t per channel (the
    same pixels, normalized with the teacher's mean_t, std_t), then resized bilinearly to the
    teacher's `image_size` (antialiased when shrinking). The identity when both views agree.

    `crop` < 1 (images decoded from files, where the teacher's centre crop is tighter than the
    students': crop = teacher crop_pct / the students' decode crop_pct): the central `crop` of each
    side is what the teacher sees, as its own decode would have cut it, so that it is not asked
    about a view it was never trained on (Lite0 crops 0.875; compact CNNs see the whole image)."""

    def __init__(self, teacher: nn.Module, *, student: models.InputConfig, teacher_input: models.InputConfig,
                 image_size: int, crop: float = 1.0) -> None:
        super().__init__()
        if not 0 < crop <= 1:
            raise ValueError(f"crop must be in (0, 1], the fraction of each side the teacher sees; got {crop}")
        self.teacher, self.image_size, self.crop = teacher, image_size, float(crop)
        s_mean, s_std = torch.tensor(student.mean), torch.tensor(student.std)
        t_mean, t_std = torch.tensor(teacher_input.mean), torch.tensor(teacher_input.std)
        self.register_buffer("scale", (s_std / t_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((s_mean - t_mean) / t_std).view(1, 3, 1, 1), persistent=False)
        self.identity_norm = bool(torch.equal(s_mean, t_mean) and torch.equal(s_std, t_std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.identity_norm:
            x = x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
        if self.crop < 1:
            x = centre_crop(x, self.crop, self.image_size)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=self.image_size < x.shape[-1])
        return self.teacher(x)


def centre_crop(x: torch.Tensor, crop: float, size: int) -> torch.Tensor:
    """The central `crop` fraction of each side of a batch (n, C, H, W), resampled bilinearly to
    (size, size): the exact region (not rounded to whole pixels), antialiased first when it shrinks."""
    if size < crop * x.shape[-1]:  # shrinking: antialias the whole image to the scale of the result
        x = F.interpolate(x, size=(round(size / crop),) * 2, mode="bilinear", align_corners=False, antialias=True)
    theta = torch.tensor([[crop, 0.0, 0.0], [0.0, crop, 0.0]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), [len(x), x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def build_online_teacher(teacher_model: dict[str, Any], student_cfg: TrialConfig, num_classes: int,
                         decode_view: tuple = ()) -> nn.Module:
    """The teacher of `teacher_model` ({"config", "state_dict"}, as search.obtain_teacher returns it)
    wrapped to take `student_cfg`'s batches (TeacherInput), in eval mode. `decode_view`: the
    students' (crop_pct, interpolation) when their images were decoded from files (Splits.decode_view);
    the teacher then sees its own, tighter centre crop of each batch."""
    teacher_cfg = TrialConfig.from_dict(teacher_model["config"])
    model = models.build_model(teacher_cfg.model, num_classes, weights="none", dropout=teacher_cfg.dropout)
    model.load_state_dict(teacher_model["state_dict"])
    teacher_input = models.input_config(teacher_cfg.model)
    crop = min(1.0, teacher_input.crop_pct / float(decode_view[0])) if decode_view else 1.0
    wrapped = TeacherInput(model, student=models.input_config(student_cfg.model), teacher_input=teacher_input,
                           image_size=teacher_cfg.image_size, crop=crop)
    return wrapped.eval()


def view_config(teacher_cfg: TrialConfig, checkpoint_config: dict[str, Any] | None) -> TrialConfig:
    """The config whose input view a teacher needs: `teacher_cfg` (the space's), with the model and
    image_size of the checkpoint it was trained as when it is loaded from one."""
    if checkpoint_config is None:
        return teacher_cfg
    values = teacher_cfg.to_dict()
    for key in ("model", "image_size", "dropout"):
        if key in checkpoint_config:
            values[key] = checkpoint_config[key]
    return TrialConfig.from_dict(values)


def teacher_splits(data: Splits, teacher_cfg: TrialConfig) -> Splits:
    """The teacher's own view of the students' split `data`: loaded again with the teacher's
    normalization and image_size from the same images (the data settings, data_seed included, are
    the students': space.parsing.SHARED_DATA_FIELDS), so row i is the same image in both. `data`
    itself when the views agree. The labels and class names are compared: a mismatch would make
    the precomputed logits' index lookup wrong and raises."""
    if views.same_view(data, teacher_cfg):
        return data
    view = data_mod.load_splits(teacher_cfg)
    if view.class_names != data.class_names or not torch.equal(view.y_train, data.y_train) \
            or not torch.equal(view.y_val, data.y_val):
        raise AssertionError(
            f"the teacher's view of the data ({teacher_cfg.model} at {teacher_cfg.image_size} px) does not hold the "
            f"students' images in their order: {len(view.y_train)}/{len(view.y_val)} train/val labels against "
            f"{len(data.y_train)}/{len(data.y_val)}")
    return view


# --- checks before Ray starts ---------------------------------------------------------------


def class_difference(teacher: tuple[str, ...] | list[str], dataset: tuple[str, ...] | list[str]) -> str:
    """What differs between the teacher's classes and the dataset's, in words."""
    teacher, dataset = list(teacher), list(dataset)
    extra = [c for c in teacher if c not in dataset]
    missing = [c for c in dataset if c not in teacher]
    if not extra and not missing:
        return f"the same classes in another order (teacher {teacher}, dataset {dataset})"
    parts = ([f"the dataset's {missing} are not among the teacher's"] if missing else []) + \
            ([f"the teacher's {extra} are not in the dataset"] if extra else [])
    return "; ".join(parts) + f" ({len(teacher)} teacher classes, {len(dataset)} dataset classes)"


def check_checkpoint_classes(path: str | Path, class_names: tuple[str, ...], key: str = "teacher.checkpoint") -> dict:
    """The checkpoint.json of teacher checkpoint `path`; ModelError naming `key` unless it was
    trained on exactly `class_names` (same names, same order: the logits index the classes)."""
    try:
        meta = checkpoints.read_meta(path)
    except models.ModelError as err:
        raise models.ModelError(f"{key}: {err}") from err
    if list(meta["class_names"]) != list(class_names):
        raise models.ModelError(f"{key}: {str(path)!r} was trained on other classes than the dataset: "
                                f"{class_difference(meta['class_names'], class_names)}")
    return meta


def check_architectures(space: Any) -> None:
    """Every student architecture (fixed `model`, or each choice of a searched `model`) and the
    teacher's exist and find their weights locally; a teacher checkpoint has the dataset's classes.
    Raises ModelError naming the key (params.model, model, teacher.model, teacher.checkpoint)."""
    student = TrialConfig.from_dict(space.fixed)
    searched = {p.name: p for p in space.params}
    if "model" in searched:
        choices, key = searched["model"].choices, "params.model"
    else:
        choices, key = (student.model,), "model"
    weights = [student.weights] if "weights" not in searched else list(searched["weights"].choices)
    for choice in choices:
        _named(key, choice, lambda c=choice: models.check_model_name(c))
        for w in weights:
            _named(key, choice, lambda c=choice, w=w: models.check_weights(c, w))
    if space.teacher_checkpoint:
        if not Path(space.teacher_checkpoint).exists():
            raise models.ModelError(f"teacher.checkpoint: {space.teacher_checkpoint!r} does not exist")
        names = data_mod.class_names(student)
        if names is not None:
            check_checkpoint_classes(space.teacher_checkpoint, names)
        return
    teacher = space.teacher_config()
    try:
        models.check_model_name(teacher.model)
    except models.ModelError as err:
        raise models.ModelError(f"teacher.model: {err}") from err
    try:
        models.check_weights(teacher.model, teacher.weights)
    except models.ModelError as err:
        raise models.ModelError(f"teacher.weights ({teacher.model}): {err}") from err


def _named(key: str, choice: str, check: Any) -> None:
    try:
        check()
    except models.ModelError as err:
        raise models.ModelError(f"{key}: {choice!r}: {err}") from err
