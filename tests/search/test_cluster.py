"""A multi-node Ray cluster on one machine (ray.cluster_utils.Cluster: a head and two worker nodes,
token authentication on), S3 storage on a loopback S3 server (moto), and fault tolerance with
real kills: the driver, a trial's process, a whole worker node.

The search runs as `python -m raytune_ft.search --address ...` subprocesses, as on a real cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from raytune_ft.report import results

pytestmark = pytest.mark.e2e

EPOCHS = 3
SPACE = f"""
name: tiny
fixed: {{model: efficientnet_lite0, weights: none, dataset: digits, max_samples: 150, image_size: 32,
        epochs: {EPOCHS}, batch_size: 32, export: false, cpus_per_trial: 1, use_pruning: true,
        bn_recalibration_batches: 1}}
teacher: {{overrides: {{epochs: 1}}}}
search: {{sampler: random, num_samples: 3, max_concurrent: 2, seed: 0, max_failures: 2}}
params:
  lr: {{type: float, low: 1.0e-3, high: 1.0e-2, log: true}}
  final_sparsity: {{type: float, low: 0.5, high: 0.8}}
objectives: {{val_acc: max, nonzero_params: min}}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The environment of the cluster and of every driver: a loopback S3 server with a bucket,
    and Ray token authentication with a token of this test's own."""
    pytest.importorskip("moto")
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    values = {
        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",  # pyarrow and boto3 both read it
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DEDUP_LOGS": "0",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in values.items():
            mp.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket="results")
        _forget_cached_token()  # an earlier ray.init() in this pytest run cached the default token
        yield dict(os.environ)
    server.stop()
    # this process cached our token when it started the cluster: forget it, so that a later
    # ray.init() in the same pytest run authenticates with the default token again
    _forget_cached_token()


def _forget_cached_token() -> None:
    from ray._raylet import AuthenticationTokenLoader, Config

    AuthenticationTokenLoader.instance().reset_cache()
    Config.initialize("")


@pytest.fixture(scope="module")
def cluster(env):
    """A head without CPUs (it only coordinates) and two 1-CPU worker nodes."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    c.named_nodes = {name: c.add_node(num_cpus=1, resources={name: 1}) for name in ("node_a", "node_b")}
    c.wait_for_nodes()
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("space") / "tiny.yaml"
    path.write_text(SPACE)
    return path


def _search(cluster, space: Path, *args: str, cwd: Path, log: Path) -> subprocess.Popen:
    out = open(log, "a")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "raytune_ft.search", "--space", str(space),
                             "--address", cluster.address, *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 400) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


def _wait_until(condition, proc: subprocess.Popen, log: Path, timeout: float = 400, allow_exit: bool = False):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert allow_exit or proc.poll() is None, f"the search ended before the kill:\n{log.read_text()[-4000:]}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting; log:\n{log.read_text()[-4000:]}")


def _epochs(trial_dir: Path) -> list[int]:
    return [r["epoch"] for r in results._read_results(trial_dir / "result.json")]


def _last_pid(trial_dir: Path) -> int:
    return results._read_results(trial_dir / "result.json")[-1]["pid"]


def _worker_processes(cluster) -> dict[int, str]:
    """pid -> worker node name, for the processes the worker nodes' raylets started."""
    import psutil
    from ray._private import ray_constants

    out = {}
    for name, node in cluster.named_nodes.items():
        if node not in cluster.worker_nodes:  # removed
            continue
        try:
            raylet = psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
            out.update({child.pid: name for child in raylet.children()})
        except psutil.Error:
            pass
    return out


def _node_of(pid: int, cluster) -> str:
    """Which worker node runs process `pid`: its parent is that node's raylet."""
    import psutil
    from ray._private import ray_constants

    parent = psutil.Process(pid).ppid()
    for name, node in cluster.named_nodes.items():
        if node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid == parent:
            return name
    raise AssertionError(f"process {pid} belongs to no worker node")


def _failures(exp: Path) -> dict[str, int]:
    files = sorted(exp.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    state = json.loads(files[-1].read_text())
    return {json.loads(t[0])["trial_id"]: json.loads(t[1]).get("num_failures", 0) for t in state["trial_data"]}


@pytest.fixture(scope="module")
def teacher(cluster, space, tmp_path_factory) -> Path:
    """A folder where the first search (the driver-kill test) notes its teacher checkpoint."""
    return tmp_path_factory.mktemp("shared")


def _reuse_teacher(teacher: Path) -> list[str]:
    """Arguments that reuse the teacher of an earlier search; none (train one) when run alone."""
    note = teacher / "path"
    return ["--set", f"teacher.checkpoint={note.read_text()}"] if note.is_file() else []


def test_a_client_without_the_cluster_token_is_refused(cluster, env, tmp_path):
    code = f"import ray; ray.init(address={cluster.address!r}); print('connected')"
    wrong = {**env, "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    proc = subprocess.run([sys.executable, "-c", code], env=wrong, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "connected" not in proc.stdout
    assert "auth" in (proc.stdout + proc.stderr).lower()


def test_driver_killed_mid_search_then_resume_completes_the_same_experiment(cluster, space, teacher, tmp_path):
    storage, log = tmp_path / "results", tmp_path / "driver.log"
    exp = storage / "k"
    args = ["--storage-path", str(storage), "--name", "k"]
    proc = _search(cluster, space, *args, cwd=tmp_path, log=log)

    def two_done_one_training():
        trials = sorted(exp.glob("trial_*"))
        done = [t for t in trials if len(_epochs(t)) >= EPOCHS]
        running = [t for t in trials if 1 <= len(_epochs(t)) < EPOCHS]
        return running[0] if len(done) == 2 and running else None

    unfinished = _wait_until(two_done_one_training, proc, log)
    os.kill(proc.pid, signal.SIGKILL)  # the driver only: its trial actors die with it
    proc.wait(timeout=30)
    before = results.read_trials(exp)
    epochs_before = len(_epochs(unfinished))
    assert len(before) == 3 and (before.status == "completed").sum() == 2
    assert 1 <= epochs_before < EPOCHS

    log2 = tmp_path / "resume.log"
    text = _finish(_search(cluster, space, *args, "--resume", cwd=tmp_path, log=log2), log2)
    assert f"resuming {exp}" in text
    assert f"[{unfinished.name.removeprefix('trial_')}] resuming after epoch" in text

    trials = pd.read_csv(exp / "trials.csv")
    assert len(trials) == 3 and trials.trial_id.is_unique  # none lost, none added
    assert (trials.status == "completed").all() and (trials.epochs_trained == EPOCHS).all()
    assert trials[["lr", "final_sparsity"]].drop_duplicates().shape[0] == 3
    # the completed trials were kept as they were, not run again
    for _, row in before[before.status == "completed"].iterrows():
        assert _epochs(exp / f"trial_{row.trial_id}") == list(range(1, EPOCHS + 1))
    # the unfinished one went on from its last checkpoint: epoch 1 was trained once
    epochs = _epochs(unfinished)
    assert epochs.count(1) == 1 and epochs[-1] == EPOCHS, epochs
    # the sampler's history holds exactly these three trials, with their results
    searcher_state = sorted(exp.glob("searcher-state-*.pkl"))
    assert searcher_state
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch()
    searcher.restore(str(searcher_state[-1]))
    study = searcher._ot_study
    assert len(study.trials) == 3
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    assert sorted(t.params["lr"] for t in study.trials) == sorted(trials.lr)
    assert (exp / "pareto.csv").is_file() and len(pd.read_csv(exp / "pareto.csv")) >= 1
    # keep the teacher for the other searches
    (teacher / "path").write_text(str(exp / "teacher"))


def test_s3_storage_on_two_nodes(cluster, space, teacher, tmp_path):
    """Trials run on both worker nodes; results, checkpoints and the search's own files land in
    the bucket; analyze reads the experiment back from s3://."""
    import boto3

    log = tmp_path / "s3.log"
    uri = "s3://results/exps"
    proc = _search(cluster, space, "--storage-path", uri, "--name", "s3", "--num-samples", "2",
                   "--set", "search.checkpoint_every=2", "--set", "search.keep_checkpoints=1",
                   *_reuse_teacher(teacher), cwd=tmp_path, log=log)
    seen: dict[int, str] = {}  # pid -> worker node, of every process the worker nodes start

    def record():
        seen.update(_worker_processes(cluster))
        return proc.poll() is not None

    _wait_until(record, proc, log, allow_exit=True)
    _finish(proc, log)

    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="results", Prefix="exps/s3/")["Contents"]}
    for name in ("trials.csv", "pareto.csv", "pareto.png", "space.json", "teacher.json", "teacher/model.pt"):
        assert f"exps/s3/{name}" in keys, name
    # checkpoints after epochs 2 and 3 (checkpoint_every=2, and the last epoch), only the newest kept
    trial_checkpoints = {k for k in keys if "/checkpoint_" in k and k.endswith("/model.pt")}
    assert len(trial_checkpoints) == 2 and all("/checkpoint_000001/" in k for k in trial_checkpoints), \
        sorted(trial_checkpoints)
    assert not any(k.endswith("training_state.pt") for k in keys)  # a final checkpoint is just the model
    assert not (tmp_path / "ray_results").exists()  # nothing written locally instead

    exp = results.load_experiment(f"{uri}/s3")
    assert len(exp.trials) == 2 and (exp.trials.status == "completed").all(), exp.trials.status.tolist()
    pids = [_last_pid(exp.local_dir / f"trial_{t}") for t in exp.trials.trial_id]
    # one trial on each worker node (the message: what was seen, if a trial's process was missed)
    assert {seen.get(pid) for pid in pids} == {"node_a", "node_b"}, (pids, seen, log.read_text()[-3000:])
    assert exp.trials.checkpoint.str.startswith(f"{uri}/s3/trial_").all()
    front = pd.read_csv(exp.local_dir / "pareto.csv")
    assert len(front) >= 1 and set(front.trial_id.astype(str)) <= set(exp.trials.trial_id.astype(str))
    proc = subprocess.run([sys.executable, "-m", "raytune_ft.analyze", f"{uri}/s3", "--out", str(tmp_path / "a")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_killed_trial_process_and_removed_node_retry_from_their_checkpoints(cluster, space, teacher, tmp_path):
    storage, log = tmp_path / "results", tmp_path / "faults.log"
    exp = storage / "f"
    # More epochs than the other tests: both kills must land while both trials are still training.
    # With 3 tiny epochs an idle machine finishes a trial between the check and the kill, and the
    # SIGKILL then hits an idle, reusable actor: no trial fails (seen in CI).
    epochs_here = 10
    proc = _search(cluster, space, "--storage-path", str(storage), "--name", "f", "--num-samples", "2",
                   "--set", f"epochs={epochs_here}", *_reuse_teacher(teacher), cwd=tmp_path, log=log)

    def both_checkpointed():
        trials = sorted(exp.glob("trial_*"))
        ready = [t for t in trials if 1 <= len(_epochs(t)) <= epochs_here - 4 and any(t.glob("checkpoint_*"))]
        return ready if len(ready) == 2 else None

    trials = _wait_until(both_checkpointed, proc, log)
    pids = {t: _last_pid(t) for t in trials}
    where = {_node_of(pid, cluster): t for t, pid in pids.items()}
    assert set(where) == {"node_a", "node_b"}
    os.kill(pids[where["node_a"]], signal.SIGKILL)  # the process training a trial
    cluster.remove_node(cluster.named_nodes["node_b"], allow_graceful=False)  # with its trial
    assert all(len(_epochs(t)) < epochs_here for t in trials), "a trial finished before the kills"
    _finish(proc, log)

    table = pd.read_csv(exp / "trials.csv")
    assert len(table) == 2 and (table.status == "completed").all()
    failures = _failures(exp)
    for trial_dir in trials:
        epochs = _epochs(trial_dir)
        assert epochs.count(1) == 1 and epochs[-1] == epochs_here, (trial_dir.name, epochs)  # resumed, not restarted
        assert failures[trial_dir.name.removeprefix("trial_")] >= 1
        assert _last_pid(trial_dir) != pids[trial_dir]  # finished by a new process (node_a is the only one left)
