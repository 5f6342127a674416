"""raytune_ft on one GPU in one command: the loop's throughput, every technique family on CUDA with
its ONNX file checked, and a real fractional-GPU search; each step in its own process with its own
timeout, a failing step recorded and the next one run. tools/gpu/gpu_check.sh installs the
carried wheels and calls this; tools/gpu/README.md has the device tool's command.

    python tools/gpu/gpu_check.py run --out DIR                  # on a machine with a GPU
    python tools/gpu/gpu_check.py run --out DIR --cpu-smoke      # the same steps, tiny, on the CPU

Steps (written to DIR after each one: summary.md, results.json, throughput.md, search.tar.gz, and
the log gpu_check.sh keeps):
 1. benchmarks/gpu_throughput.py: train.fit against a plain PyTorch loop (ResNet-50, 224 px, bf16,
    channels_last on the GPU).
 2. train.fit on the device for each family alone and all together (magnitude + channel pruning +
    KD with an online teacher + L2-SP + QAT), all together once more stopped after epoch 1 and
    resumed from its checkpoint, each exported by search.trial.export_and_measure (the
    trial's own export: fp32 model.onnx, int8 model.int8.onnx when quantized) and checked: the
    ONNX files' accuracy against the PyTorch model's (TOLERANCES says how close and why).
 3. python -m raytune_ft.search with tools/gpu/gpu_space.yaml: 4 trials at 0.25 GPU each on the
    Fashion-MNIST subset that travels along (gpu_data/), else scikit-learn's digits; the front,
    the time per phase, and the GPU's processes and memory sampled by nvidia-smi meanwhile.
Without a GPU (and without --cpu-smoke) it says so and exits with status 2 before doing anything.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GPU_DATA = ROOT / "gpu_data" / "fashion-mnist"

# Technique switches of each step-2 case on top of BASE (every family alone, then all together).
# KD needs augment: with augmented batches search.trial.training_inputs picks the online teacher
# (the teacher model run on each batch), the path a GPU changes most.
FAMILY_CASES: dict[str, dict[str, Any]] = {
    "dense": {},
    "regularization": {"use_l2sp": True, "l2sp_alpha": 1e-3, "use_weight_decay": True, "weight_decay": 1e-4,
                       "use_label_smoothing": True, "label_smoothing": 0.1},
    "distillation": {"use_kd": True, "kd_alpha": 0.7, "kd_temperature": 4.0, "augment": True},
    "magnitude_pruning": {"use_pruning": True, "final_sparsity": 0.8, "pruning_end": 0.7, "pruning_frequency": 5},
    "channel_pruning": {"use_channel_pruning": True, "channel_pruning_ratio": 0.4, "channel_pruning_steps": 2},
    "quantization": {"use_quantization": True, "quant_aware_fraction": 0.5},  # QAT, then the int8 file
}
FAMILY_CASES["all"] = {k: v for case in FAMILY_CASES.values() for k, v in case.items()
                       if k not in ("use_weight_decay", "weight_decay", "use_label_smoothing", "label_smoothing")}
# "all" stopped after its first epoch and resumed from that checkpoint, as a retried or --resume'd
# trial is (search.trial.load_training_checkpoint reads it onto the CPU; fit then trains on the device)
FAMILY_CASES["all_resumed"] = dict(FAMILY_CASES["all"])


class _Interrupted(Exception):
    """Stops fit() after the epoch whose checkpoint the resumed case continues from."""

# How close the exported files must come to the PyTorch model, on the validation split (n images);
# each bound is at least a few images (2/n or 3/n) so that small smoke splits are not judged on one.
TOLERANCES = {
    # model.onnx against the same network in PyTorch fp32 on the CPU: one float32 function computed in
    # another operation order, with BatchNorm folded into the convolutions (relative differences of
    # 1e-6 to 1e-5): only images whose two largest logits tie that closely can change class.
    "onnx_fp32_vs_torch_fp32": 0.01,
    # the shipped int8 file against PyTorch fp32: int8 changes the function. Published int8 costs are
    # 0.2-1 point (EfficientNet-Lite0 75.1 -> 74.4 %, ResNet-50 76.13 -> 75.92 %), 0.8 points measured
    # here on a sparse student (DESIGN.md); these models train 2 epochs from random init and have small
    # margins, so more images change class. 5 points still catches a broken file (chance is 10 %).
    "onnx_int8_vs_torch_fp32": 0.05,
    # fit()'s own val_acc on the device (bf16 autocast on the GPU) against fp32 on the CPU: bf16 keeps
    # 8 significant bits, rounding errors of ~0.2 % per operation grow to ~1 % of the logits through
    # ~50 layers and flip only near-ties (bf16 and fp32 evaluations of ImageNet models differ by ~0.1
    # point). With QAT fit's last val_acc is the fake-quantized network's, compared with the int8 file.
    "device_vs_torch_fp32": 0.02,
}


# --- one step-2 case, in its own process -------------------------------------------------------------


def family_case(case: str, *, cpu_smoke: bool, work: Path) -> dict[str, Any]:
    """Train one FAMILY_CASES recipe with train.fit on the device, export it like a trial does and
    compare the files with the PyTorch model. Returns the measurements and the checks."""
    import numpy as np
    import torch

    from raytune_ft import checkpoints, layout, models, train
    from raytune_ft import data as data_mod
    from raytune_ft.config import TrialConfig
    from raytune_ft.deploy import export
    from raytune_ft.search import trial
    from raytune_ft.train import teachers

    cuda = not cpu_smoke
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device visible")
    threads = 1 if cpu_smoke else 4
    torch.set_num_threads(threads)
    base = dict(model="efficientnet_lite0", weights="none", image_size=32, lr=5e-3, seed=0,
                epochs=2, batch_size=64 if cpu_smoke else 128,
                latency_budget_s=0.1 if cpu_smoke else 0.3, cpus_per_trial=threads,
                use_gpu=cuda, gpus_per_worker=1.0 if cuda else 0.0, amp=cuda, channels_last=True,
                **dataset_settings(cpu_smoke, max_samples=400 if cpu_smoke else 6000))
    cfg = TrialConfig.from_dict({**base, **FAMILY_CASES[case]})
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    data = data_mod.load_splits(cfg).without_test()
    out: dict[str, Any] = {"case": case, "device": str(device), "config": {k: v for k, v in cfg.to_dict().items()
                                                                            if v != TrialConfig().to_dict()[k]},
                           "train_images": len(data.y_train), "val_images": len(data.y_val)}
    teacher_model = None
    if cfg.use_kd:  # the dense teacher, fine-tuned on the device first (one epoch), then run on every batch
        teacher_cfg = TrialConfig.from_dict({**base, "epochs": 1})
        torch.manual_seed(0)
        teacher_net = models.build_model(teacher_cfg.model, data.num_classes, weights="none")
        started = time.perf_counter()
        train.fit(teacher_cfg, teacher_net, data, head_names=models.head_parameter_names(teacher_net),
                  report=lambda *_: None, dist=train.Dist(device=device))
        out["teacher_fit_s"] = time.perf_counter() - started
        teacher_net.cpu()
        teacher_model = {"config": teacher_cfg.to_dict(), "state_dict": teacher_net.state_dict()}
    def new_model() -> torch.nn.Module:
        torch.manual_seed(cfg.seed)
        return models.build_model(cfg.model, data.num_classes, weights=cfg.weights, dropout=cfg.dropout)

    def fit(model: torch.nn.Module, report: Any, resume: dict[str, Any] | None = None) -> dict[str, Any]:
        dist = train.Dist(device=device)
        batches, logits, teacher = trial.training_inputs(cfg, data, dist=dist, teacher_model=teacher_model)
        if cfg.use_kd:
            assert isinstance(teacher, teachers.TeacherInput), "expected the online teacher"
        return train.fit(cfg, model, data, head_names=models.head_parameter_names(model), report=report,
                         teacher_logits=logits, teacher=teacher, batches=batches, dist=dist, resume=resume)

    epochs: list[dict[str, Any]] = []
    started = time.perf_counter()
    resume = None
    if case == "all_resumed":  # the checkpoint tune_trial writes after epoch 1, then a fresh process's view
        checkpoint = work / case / "checkpoint_epoch1"

        def stop_after_first(metrics: dict[str, Any], model: torch.nn.Module, state: Any) -> None:
            epochs.append(metrics)
            checkpoint.mkdir(parents=True, exist_ok=True)
            torch.save(state(), checkpoint / layout.TRAINING_STATE)
            checkpoints.save_checkpoint(checkpoint, model, config=cfg.to_dict(), class_names=data.class_names,
                                        metrics=metrics)
            raise _Interrupted

        try:
            fit(new_model(), stop_after_first)
        except _Interrupted:
            pass
        model = new_model()
        resume = trial.load_training_checkpoint(model, checkpoint)
        out["resumed_after_epoch"] = resume["epoch"]
    else:
        model = new_model()
    metrics = fit(model, lambda m, *_: epochs.append(m), resume)
    if cuda:
        torch.cuda.synchronize()
        out["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    out["fit_s"] = time.perf_counter() - started
    out["epoch_time_s"] = [round(m["epoch_time_s"], 2) for m in epochs]
    out["device_val_acc"] = metrics["val_acc"]
    out["sparsity"], out["params_torch"] = metrics.get("sparsity"), metrics.get("params")
    out["param_device"] = str(next(model.parameters()).device)

    backup = copy.deepcopy(model).cpu()  # the fallback if the device's model cannot be exported
    directory = work / case / "export"
    started = time.perf_counter()
    try:
        measured = trial.export_and_measure(model, cfg, data, metrics, directory)
        out["export"] = "ok (the model as trained, on its device)"
        exported = model
    except Exception as err:  # noqa: BLE001 - recorded; the CPU copy is then exported instead
        out["export"] = f"FAILED on {out['param_device']}: {type(err).__name__}: {str(err).splitlines()[0][:300]}"
        out["export_check"] = "FAIL"
        measured = trial.export_and_measure(backup, cfg, data, metrics, work / case / "export_cpu_copy")
        directory, exported = work / case / "export_cpu_copy", backup
    out["export_s"] = time.perf_counter() - started
    out["measured"] = {k: v for k, v in measured.items() if isinstance(v, (int, float))}

    # the network as exported (QAT's fake quantization removed by export_and_measure), fp32 on the CPU
    reference = copy.deepcopy(exported).cpu().float().eval().to(memory_format=torch.contiguous_format)
    x_val, y_val = data.x_val, data.y_val.numpy()
    n = len(y_val)
    torch_logits = train.predict_logits(reference, x_val).numpy()
    onnx_logits = export.run_onnx(directory / "model.onnx", x_val, threads=threads)
    torch_acc = float((torch_logits.argmax(1) == y_val).mean())
    onnx_acc = float((onnx_logits.argmax(1) == y_val).mean())
    deployed = export.deployed_file(directory)
    out.update(torch_fp32_cpu_acc=torch_acc, onnx_fp32_acc=onnx_acc, deployed=deployed.name,
               onnx_vs_torch_max_abs_logit=float(np.abs(onnx_logits - torch_logits).max()),
               onnx_vs_torch_agreement=float((onnx_logits.argmax(1) == torch_logits.argmax(1)).mean()))
    checks = {"onnx_fp32_vs_torch_fp32": (onnx_acc, torch_acc, 2 / n),
              # the same bound on the share of images whose class differs at all (accuracy could hide swaps)
              "onnx_fp32_vs_torch_fp32_agreement": (out["onnx_vs_torch_agreement"], 1.0, 2 / n)}
    int8_acc = None
    if deployed.name != "model.onnx":
        int8_acc = export.onnx_accuracy(deployed, x_val, y_val, threads=threads)
        out["onnx_int8_acc"] = int8_acc
        checks["onnx_int8_vs_torch_fp32"] = (int8_acc, torch_acc, 3 / n)
    qat = cfg.use_quantization and cfg.quant_aware_fraction > 0
    checks["device_vs_torch_fp32"] = (out["device_val_acc"], int8_acc if qat else torch_acc, 2 / n)
    out["checks"] = {}
    for name, (got, want, floor) in checks.items():
        bound = "onnx_fp32_vs_torch_fp32" if name.endswith("_agreement") else name
        tolerance = max(TOLERANCES[bound], floor) if not (qat and name == "device_vs_torch_fp32") \
            else max(TOLERANCES["onnx_int8_vs_torch_fp32"], 3 / n)
        out["checks"][name] = {"got": got, "against": want, "diff": got - want, "tolerance": tolerance,
                               "ok": abs(got - want) <= tolerance}
    out["ok"] = all(c["ok"] for c in out["checks"].values()) and out.get("export_check") != "FAIL"
    return out


def dataset_settings(cpu_smoke: bool, *, max_samples: int | None) -> dict[str, Any]:
    """The carried Fashion-MNIST subset when it is there, else scikit-learn's digits (in every image)."""
    if GPU_DATA.is_dir():
        return {"dataset": "fashion_mnist", "data_root": str(GPU_DATA), "max_samples": max_samples}
    return {"dataset": "digits", "max_samples": min(max_samples, 1797) if max_samples else None}


# --- the orchestrator ---------------------------------------------------------------------------


class Check:
    """The steps, each a subprocess with a timeout inside one overall deadline; results.json and
    summary.md are rewritten after every step, so a run stopped from outside still leaves them."""

    def __init__(self, out: Path, work: Path, *, cpu_smoke: bool, deadline_s: float) -> None:
        self.out, self.work, self.cpu_smoke = out, work, cpu_smoke
        self.started = time.monotonic()
        self.deadline = self.started + deadline_s
        self.results: dict[str, Any] = {"mode": "cpu-smoke" if cpu_smoke else "gpu", "date": time.strftime("%F %T"),
                                        "steps": {}}
        out.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, command: list[str], timeout_s: float, *, env: dict[str, str] | None = None,
            cwd: Path = ROOT) -> dict[str, Any]:
        """Run `command` in its own session, echo its output, stop it (and every process it left in
        its session: Ray's) after timeout_s or at the deadline; returns rc, seconds, output."""
        timeout_s = max(1.0, min(timeout_s, self.deadline - time.monotonic()))
        print(f"\n=== {name}: {' '.join(command)}  (timeout {timeout_s:.0f}s)", flush=True)
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, **(env or {})}, start_new_session=True, bufsize=1)
        lines: list[tuple[float, str]] = []  # (seconds since the step started, line)

        def pump() -> None:
            for line in process.stdout:  # type: ignore[union-attr]
                lines.append((time.monotonic() - started, line))
                print(f"  {line}", end="", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            print(f"=== {name}: TIMEOUT after {timeout_s:.0f}s, stopping it", flush=True)
            _signal_session(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        _signal_session(process.pid, signal.SIGKILL)  # whatever it left behind (raylet, gcs_server, workers)
        process.wait()
        reader.join(timeout=5)
        seconds = time.monotonic() - started
        print(f"=== {name}: rc={process.returncode}{' (timed out)' if timed_out else ''} in {seconds:.1f}s", flush=True)
        return {"rc": process.returncode, "timed_out": timed_out, "seconds": round(seconds, 1),
                "output": "".join(line for _, line in lines), "timed_lines": lines}

    def record(self, step: str, result: dict[str, Any]) -> None:
        self.results["steps"][step] = {k: v for k, v in result.items() if k != "timed_lines"}
        self.results["elapsed_s"] = round(time.monotonic() - self.started, 1)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2, default=str))
        (self.out / "summary.md").write_text(summary(self.results))

    # step 0
    def environment(self) -> None:
        code = ("import sys, importlib, json\n"
                "import torch\n"
                "info = {'python': sys.version.split()[0], 'torch': torch.__version__, 'cuda': torch.version.cuda,\n"
                "        'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,\n"
                "        'bf16': torch.cuda.is_available() and torch.cuda.is_bf16_supported()}\n"
                "for name in ('ray', 'optuna', 'torch_pruning', 'timm', 'onnx', 'onnxruntime', 'numpy',\n"
                "             'pandas', 'pyarrow', 'google.protobuf', 'typing_extensions', 'aiohttp', 'pydantic',\n"
                "             'sqlalchemy'):\n"
                "    try:\n"
                "        m = importlib.import_module(name)\n"
                "        info[name] = f\"{getattr(m, '__version__', '?')} ({m.__file__.rsplit('/', 2)[0]})\"\n"
                "    except Exception as err:\n"
                "        info[name] = f'NOT IMPORTABLE: {type(err).__name__}: {err}'\n"
                "import ray._private.utils\n"
                "info['ray_dashboard_deps'] = ray._private.utils.get_dashboard_dependency_error() or 'ok'\n"
                "from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager as gpus\n"
                "info['ray_sees_gpus'] = gpus.get_current_node_num_accelerators()  # pynvml, as ray.init counts\n"
                "print('ENV ' + json.dumps(info))\n")
        result = self.run("environment", [sys.executable, "-c", code], 120)
        info = _tagged_json(result["output"], "ENV ")
        if not self.cpu_smoke:
            smi = self.run("nvidia-smi", ["nvidia-smi"], 30)
            result["nvidia_smi"] = smi["output"]
        self.record("environment", {**result, "info": info, "ok": result["rc"] == 0 and info is not None})

    # step 1
    def throughput(self) -> None:
        script = str(ROOT / "benchmarks" / "gpu_throughput.py")
        if self.cpu_smoke:
            command = [sys.executable, script, "--device", "cpu", "--model", "efficientnet_lite0", "--image-size", "32",
                       "--batch-size", "16", "--steps", "3", "--repeats", "1", "--threads", "1", "--no-amp"]
        else:
            command = [sys.executable, script, "--device", "cuda", "--batch-size", "128", "--steps", "40",
                       "--repeats", "3"]
        result = self.run("throughput", command, 120)
        table = result["output"][result["output"].find("Measured"):] if "Measured" in result["output"] else ""
        (self.out / "throughput.md").write_text(table or result["output"][-4000:])
        self.record("throughput", {**result, "table": table, "ok": result["rc"] == 0 and bool(table)})

    # step 2
    def families(self, reserve_s: float) -> None:
        """Every FAMILY_CASES case in its own process; a case is not started once less than
        `reserve_s` is left before the deadline (kept for the search)."""
        cases: dict[str, Any] = {}
        started = time.monotonic()
        for case in FAMILY_CASES:
            if self.deadline - time.monotonic() < reserve_s:
                cases[case] = {"case": case, "ok": False, "error": f"not started: the last {reserve_s:.0f} s "
                               "before the deadline are kept for the search"}
                continue
            command = [sys.executable, str(Path(__file__).resolve()), "family", case,
                       "--work", str(self.work / "families")]
            result = self.run(f"family {case}", command + (["--cpu-smoke"] if self.cpu_smoke else []),
                              240 if self.cpu_smoke else 90)
            found = _tagged_json(result["output"], "RESULT ")
            cases[case] = found or {"case": case, "ok": False, "error": _last_error(result)}
            cases[case]["process_s"] = result["seconds"]
            self.record("families", {"cases": cases, "seconds": round(time.monotonic() - started, 1),
                                     "ok": all(c.get("ok") for c in cases.values())})
        self.record("families", {"cases": cases, "seconds": round(time.monotonic() - started, 1),
                                 "ok": all(c.get("ok") for c in cases.values())})

    # step 3
    def search(self, export: str) -> None:
        families = self.results["steps"].get("families", {}).get("cases", {})
        export_broken = any(str(c.get("export", "")).startswith("FAILED") for c in families.values())
        export_on = export == "on" or (export == "auto" and not export_broken)
        space = self.work / "gpu_space.yaml"
        space.write_text(_space_text(export_on))
        storage = self.work / "search"
        name = "gpu_check"
        overrides = [f"data_root={GPU_DATA}"] if GPU_DATA.is_dir() else ["dataset=digits", "data_root=null"]
        if self.cpu_smoke:  # fractional GPUs become whole CPUs: 2 trials at a time, 1 CPU each
            overrides += ["use_gpu=false", "gpus_per_worker=0", "amp=false", "cpus_per_trial=1", "max_samples=400",
                          "max_test_samples=100", "epochs=1", "batch_size=32", "latency_budget_s=0.1",
                          "teacher.epochs=1", "search.max_concurrent=2"]
        command = [sys.executable, "-m", "raytune_ft.search", "--space", str(space), "--storage-path", str(storage),
                   "--name", name] + [a for o in overrides for a in ("--set", o)]
        sampler = None if self.cpu_smoke else GpuSampler()
        if sampler:
            sampler.start()
        result = self.run("search", command, 420 if self.cpu_smoke else 300)
        gpu = sampler.stop() if sampler else None
        exp = storage / name
        found = read_experiment(exp)
        with tarfile.open(self.out / "search.tar.gz", "w:gz") as tar:  # the experiment's small files
            for path in sorted(exp.glob("*")) if exp.is_dir() else []:
                if path.is_file() and path.stat().st_size < 2**20:
                    tar.add(path, arcname=f"{name}/{path.name}")
        self.record("search", {**result, **found, "phases_s": search_phases(result["timed_lines"]),
                               "gpu_samples": gpu, "export": export_on,
                               "export_reason": "exporting a CUDA model failed in step 2" if not export_on else "",
                               "ok": result["rc"] == 0 and bool(found.get("front"))})


class GpuSampler:
    """nvidia-smi every second while the search runs: processes on the GPU and memory in use."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._t0 = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                                      capture_output=True, text=True, timeout=5).stdout.split()
                gpu = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                     timeout=5).stdout.strip().split(",")
                self.samples.append((round(time.monotonic() - self._t0, 1), len(apps), float(gpu[0]), float(gpu[1])))
            except Exception:  # noqa: BLE001 - a missed sample
                continue

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=10)
        if not self.samples:
            return {"samples": 0}
        return {"samples": len(self.samples), "max_processes": max(s[1] for s in self.samples),
                "max_utilization_pct": max(s[2] for s in self.samples),
                "max_memory_used_mib": max(s[3] for s in self.samples),
                "series": self.samples[:: max(1, len(self.samples) // 60)]}


def _space_text(export_on: bool) -> str:
    """tools/gpu/gpu_space.yaml, or (export off) the same without the quantization recipes, which
    need an exported file: the fallback when exporting a CUDA-trained model fails (step 2)."""
    import yaml

    space = yaml.safe_load((ROOT / "tools" / "gpu" / "gpu_space.yaml").read_text())
    if not export_on:
        space["fixed"]["export"] = False
        space["objectives"] = {"val_acc": "max", "nonzero_params": "min"}
        space["params"] = {k: v for k, v in space["params"].items() if not k.startswith(("use_quant", "quant_"))}
        space["fixed"]["use_quantization"] = False
        space["search"]["initial"] = [{k: v for k, v in r.items() if not k.startswith(("use_quant", "quant_"))}
                                      for r in space["search"]["initial"]]
    return yaml.safe_dump(space, sort_keys=False)


# Lines the search prints at the start of each phase (search/cli.py), in order.
PHASE_MARKERS = (("ray start, data", "experiment:"), ("teacher fine-tune", "teacher: fine-tuning"),
                 ("teacher export + int8 baseline", "teacher: exporting"), ("tune start", "teacher: "),
                 ("trials", " started: "), ("re-timing, test split, report", "search finished"))


def search_phases(timed_lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds of each phase of the search, from when its first marker line appeared to the next
    phase's (the last phase ends with the process). A phase whose marker never came is left out."""
    starts: list[tuple[str, float]] = []
    for phase, marker in PHASE_MARKERS:
        after = starts[-1][1] if starts else 0.0
        hit = next((t for t, line in timed_lines if marker in line and t >= after
                    and not (phase == "tune start" and ("fine-tuning" in line or "exporting" in line
                                                        or "int8 baseline" in line))), None)
        if hit is not None:
            starts.append((phase, hit))
    end = timed_lines[-1][0] if timed_lines else 0.0
    return {phase: round((starts[i + 1][1] if i + 1 < len(starts) else end) - t, 1)
            for i, (phase, t) in enumerate(starts)}


def read_experiment(exp: Path) -> dict[str, Any]:
    """The front, the teacher and the phase times of a finished experiment folder."""
    import pandas as pd

    out: dict[str, Any] = {}
    if (exp / "teacher.json").is_file():
        teacher = json.loads((exp / "teacher.json").read_text())
        out["teacher"] = {k: teacher.get(k) for k in ("model", "val_acc", "model_bytes_compressed", "wall_time_s")}
    if (exp / "trials.csv").is_file():
        trials = pd.read_csv(exp / "trials.csv")
        keep = [c for c in ("trial_id", "status", "use_kd", "use_pruning", "use_channel_pruning", "use_l2sp",
                            "use_quantization", "val_acc", "model_bytes_compressed", "nonzero_params", "wall_time_s",
                            "epoch_time_s", "export_time_s", "error") if c in trials.columns]
        out["trials"] = trials[keep].to_dict("records")
        out["trial_columns"] = list(trials.columns)
    if (exp / "pareto.csv").is_file():
        front = pd.read_csv(exp / "pareto.csv")
        keep = [c for c in ("trial_id", "val_acc", "test_acc", "model_bytes_compressed", "nonzero_params",
                            "deployed", "export_path") if c in front.columns]
        out["front"] = front[keep].to_dict("records")
    return out


def summary(results: dict[str, Any]) -> str:
    """The human-readable report of results.json."""
    steps = results["steps"]
    lines = [f"# GPU check ({results['mode']}), {results['date']}, {results.get('elapsed_s', 0):.0f} s in all", ""]
    env = steps.get("environment", {}).get("info") or {}
    if env:
        lines += ["## Environment", "", *[f"- {k}: {v}" for k, v in env.items()], ""]
    if "throughput" in steps:
        t = steps["throughput"]
        lines += ["## 1. Throughput (benchmarks/gpu_throughput.py)", "",
                  t.get("table") or f"FAILED (rc {t['rc']}{', timed out' if t['timed_out'] else ''}): "
                  f"{_last_error(t)}", ""]
    if "families" in steps:
        lines += ["## 2. Families on the device, exported and checked", "",
                  "| case | ok | fit s (epochs) | device val_acc | torch fp32 | model.onnx | int8 | max abs logit diff "
                  "| deployed, gzip KB | export |", "|---|---|---|---|---|---|---|---|---|---|"]
        for case, c in steps["families"]["cases"].items():
            if "checks" not in c:
                lines.append(f"| {case} | FAIL | | | | | | | | {c.get('error', '')[:200]} |")
                continue
            m = c["measured"]
            epochs = ", ".join(map(str, c["epoch_time_s"]))
            lines.append(f"| {case} | {'ok' if c['ok'] else 'FAIL'} | {c['fit_s']:.1f} ({epochs}) "
                         f"| {c['device_val_acc']:.4f} | {c['torch_fp32_cpu_acc']:.4f} | {c['onnx_fp32_acc']:.4f} "
                         f"| {c.get('onnx_int8_acc', float('nan')):.4f} | {c['onnx_vs_torch_max_abs_logit']:.2e} "
                         f"| {c['deployed']}, {m.get('model_bytes_compressed', 0) / 1e3:.0f} | {c['export'][:160]} |")
        failed = [f"{case}: {name} {v['got']:.4f} vs {v['against']:.4f} (tolerance {v['tolerance']:.3f})"
                  for case, c in steps["families"]["cases"].items() for name, v in c.get("checks", {}).items()
                  if not v["ok"]]
        lines += ["", "Checks outside their tolerance: " + ("; ".join(failed) if failed else "none"), ""]
    if "search" in steps:
        s = steps["search"]
        lines += ["## 3. Search (python -m raytune_ft.search, tools/gpu/gpu_space.yaml)", "",
                  f"rc {s['rc']}{' (timed out)' if s['timed_out'] else ''}, {s['seconds']:.0f} s wall; export "
                  f"{'on' if s['export'] else 'OFF: ' + s['export_reason']}", ""]
        if s.get("phases_s"):
            lines.append("Phases (s): " + ", ".join(f"{k} {v:.0f}" for k, v in s["phases_s"].items()))
        if s.get("teacher"):
            lines.append(f"Teacher: {s['teacher']}")
        if s.get("gpu_samples"):
            g = s["gpu_samples"]
            lines.append(f"GPU while searching: {g.get('samples')} samples, up to {g.get('max_processes')} processes, "
                         f"{g.get('max_utilization_pct')} % utilization, {g.get('max_memory_used_mib')} MiB")
        if s.get("trials"):
            columns = list(s["trials"][0])
            lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in s["trials"]]
        lines += ["", "Front:", *([f"- {row}" for row in s.get("front", [])] or ["- (none)"])]
        if s["rc"] != 0:
            lines += ["", f"Error: {_last_error(s)}"]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"  # NaN: empty
    return str(value)[:120]


def _signal_session(session: int, sig: signal.Signals) -> None:
    """Send `sig` to every process of session `session` (the step's own, made by start_new_session)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session:  # field 6 of stat: the session id
                os.kill(int(proc.name), sig)
        except (OSError, ValueError, IndexError):
            continue


def _tagged_json(output: str, tag: str) -> dict[str, Any] | None:
    for line in reversed(output.splitlines()):
        if line.startswith(tag):
            return json.loads(line[len(tag):])
    return None


def _last_error(result: dict[str, Any]) -> str:
    lines = [line for line in result.get("output", "").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors[-1] if errors else lines[-1] if lines else f"rc {result.get('rc')}")[:400]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="every step, results under --out")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--work", type=Path, default=Path("/tmp/gpu_check_work"))
    r.add_argument("--cpu-smoke", action="store_true", help="the same steps on the CPU at a tiny size")
    r.add_argument("--deadline", type=float, help="seconds for all steps together (default 460 on the GPU, "
                   "900 with --cpu-smoke)")
    r.add_argument("--search-export", choices=["auto", "on", "off"], default="auto",
                   help="auto: off only when step 2 found that a CUDA-trained model cannot be exported")
    r.add_argument("--steps", default="environment,throughput,families,search")
    f = sub.add_parser("family", help="one step-2 case (run by `run` in its own process)")
    f.add_argument("case", choices=list(FAMILY_CASES))
    f.add_argument("--work", type=Path, required=True)
    f.add_argument("--cpu-smoke", action="store_true")
    args = p.parse_args()
    if args.command == "family":
        result = family_case(args.case, cpu_smoke=args.cpu_smoke, work=args.work)
        print("RESULT " + json.dumps(result, default=str), flush=True)
        return 0 if result["ok"] else 1
    if not args.cpu_smoke and not _cuda_visible():
        print("gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False); nothing was run. "
              "--cpu-smoke runs the same steps on the CPU at a tiny size.", file=sys.stderr)
        return 2
    deadline = args.deadline or (900 if args.cpu_smoke else 460)
    check = Check(args.out, args.work, cpu_smoke=args.cpu_smoke, deadline_s=deadline)
    for step in args.steps.split(","):
        if time.monotonic() >= check.deadline:
            check.record(step, {"ok": False, "rc": None, "timed_out": True, "seconds": 0,
                                "output": "not started: the overall deadline had passed"})
            continue
        try:
            if step == "search":
                check.search(args.search_export)
            elif step == "families":
                check.families(reserve_s=0 if "search" not in args.steps else 240 if args.cpu_smoke else 200)
            else:
                getattr(check, step)()
        except Exception as err:  # noqa: BLE001 - the step's own failure, recorded; the next step runs
            check.record(step, {"ok": False, "rc": None, "timed_out": False, "seconds": 0,
                                "output": f"{type(err).__name__}: {err}"})
    print("\n" + (args.out / "summary.md").read_text(), flush=True)
    return 0 if all(s.get("ok") for s in check.results["steps"].values()) else 1


def _cuda_visible() -> bool:
    """torch.cuda.is_available() in a child process with a 90 s limit (a broken driver can hang it)."""
    try:
        probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"
        result = subprocess.run([sys.executable, "-c", probe], timeout=90, capture_output=True)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


if __name__ == "__main__":
    sys.exit(main())
