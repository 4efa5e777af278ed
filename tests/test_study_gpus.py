"""GPUs of a study's trials: how many each run asks Ray for, when runs are kept on the CPU, the one-line refusals,
and a real local Ray with GPUs that hands each run its own (declared to Ray, so the test runs on any machine)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from yololab.config import load_config
from yololab.study import StudyError, load_study
from yololab.study.execute import run_study, trial_gpus
from yololab.study.trial import RUN_RECORD, run_dir

STUDY = """\
data: {make: digits, options: {tiny: true, seed: 1}}
base:
  cfg: yolov3-tiny-3l-small
  preset: yololab
  set: {data.imgsz: 128, data.batch: 8, diagnostics.grad_share_every: 0,
        diagnostics.report: false, diagnostics.histograms: falseACCELERATOR}
budget: {epochs: 1}
seeds: 1
factors:
  loss.obj_target: [one]
"""


def _study(tmp_path: Path, gpus: str | None = None, accelerator: str | None = None):
    text = STUDY.replace("ACCELERATOR", f", train.accelerator: {accelerator}" if accelerator else "")
    if gpus is not None:
        text += f"gpus_per_trial: {gpus}\n"
    path = tmp_path / "gpus.yaml"
    path.write_text(text)
    return load_study(path)


@pytest.mark.parametrize("gpus, accelerator, cluster_gpus, local, expected", [
    (None, None, 0.0, True, (0.0, None)),      # no GPU anywhere: the config's accelerator decides (auto: CPU)
    (None, None, 2.0, True, (1.0, None)),      # GPUs: one per run
    (None, "cpu", 2.0, True, (0.0, "cpu")),    # the base asks for the CPU: no GPU is taken from Ray
    ("0.5", None, 1.0, True, (0.5, None)),     # two runs share a GPU
    ("0", None, 1.0, True, (0.0, "cpu")),      # no GPU for the runs: kept off the GPU Ray leaves visible
    ("1", None, 0.0, False, (1.0, None)),      # a cluster may add GPU nodes: left to Ray
])
def test_gpus_of_a_trial(tmp_path, gpus, accelerator, cluster_gpus, local, expected):
    assert trial_gpus(_study(tmp_path, gpus, accelerator), cluster_gpus, local) == expected


@pytest.mark.parametrize("gpus, accelerator, cluster_gpus, problem", [
    ("1", None, 0.0, r"gpus\.yaml:11: gpus_per_trial: 1 GPUs per run, but Ray on this machine sees 0 \(set "
                     r"gpus_per_trial: 0 to train on the CPU\)$"),
    ("2", None, 1.0, r"gpus\.yaml:11: gpus_per_trial: 2 GPUs per run, but Ray on this machine sees 1"),
    ("0", "gpu", 1.0, r"gpus\.yaml:11: gpus_per_trial: the base sets train\.accelerator: gpu, which needs a GPU"),
])
def test_gpus_a_trial_cannot_have_are_one_line_naming_the_key(tmp_path, gpus, accelerator, cluster_gpus, problem):
    with pytest.raises(StudyError, match=problem):
        trial_gpus(_study(tmp_path, gpus, accelerator), cluster_gpus, local=True)


@pytest.fixture
def ray_with_gpus():
    """A local Ray that holds 2 GPUs (declared: Ray assigns them to trials and sets CUDA_VISIBLE_DEVICES, and on a
    machine without them torch finds no CUDA device and the runs train on the CPU)."""
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray is already running in this process")
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 2**20)
    yield
    ray.shutdown()


def test_each_run_gets_a_gpu_from_ray(tmp_path, ray_with_gpus):
    study = _study(tmp_path)
    outcome = run_study(study, tmp_path, "gpus", verbose=0)
    assert outcome.failed == [] and outcome.trained == 1
    for seed in study.seeds:
        folder = run_dir(outcome.study_dir, study.configurations[0].name, seed)
        record = json.loads((folder / RUN_RECORD).read_text())
        assert len(record["gpu_ids"]) == 1 and record["gpu_ids"][0] in {"0", "1"}
        assert load_config(folder / "config.yaml").train.accelerator == "auto"


def _chained(*errors: Exception) -> Exception:
    """``errors[0]`` raised from ``errors[1]`` raised from ..., as ``ray.init`` chains them."""
    for outer, inner in itertools.pairwise(errors):
        outer.__cause__ = inner
    return errors[0]


@pytest.mark.parametrize("error, problem", [
    # ray 2.60 against a `ray start --head` cluster without RAY_AUTH_MODE=token (seen on this machine)
    (_chained(ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6390"),
              RuntimeError("Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n"
                           "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token "
                           "is missing or incorrect.")), "asks for its token: set RAY_AUTH_MODE=token"),
    (ConnectionError("Failed to connect to Ray cluster at 10.0.0.9:6379"), "no Ray cluster answers there"),
])
def test_a_cluster_that_cannot_be_reached_is_one_line(error, problem):
    from yololab.study.execute import _connection_problem

    line = _connection_problem(error)
    assert problem in line and "\n" not in line


def test_an_address_where_nothing_listens_is_one_line_at_once(tmp_path):
    """A port that was just free (bound, then closed): the connection is refused, and the study stops before Ray
    (which would retry it for minutes)."""
    import time

    port = _free_port()
    start = time.perf_counter()
    with pytest.raises(StudyError, match=rf"^--address 127\.0\.0\.1:{port}: nothing answers there \(Connection "
                                         r"refused\): start the cluster"):
        run_study(_study(tmp_path), tmp_path, "nowhere", address=f"127.0.0.1:{port}", verbose=0)
    assert time.perf_counter() - start < 5


def _free_port() -> int:
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return free.getsockname()[1]


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "[::1]:{port}", "ray://127.0.0.1:{port}"])
def test_every_form_of_an_address_is_checked(form):
    """A TCP check per form of address Ray takes; ``auto`` (find the cluster) is left to Ray."""
    import socket

    from yololab.study.execute import _unreachable

    with socket.socket(socket.AF_INET6 if form.startswith("[") else socket.AF_INET) as server:
        try:
            server.bind(("::1" if form.startswith("[") else "127.0.0.1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback on this machine")
        server.listen()
        port = server.getsockname()[1]
        assert _unreachable(form.format(port=port)) is None
    assert "Connection refused" in _unreachable(form.format(port=port))
    assert _unreachable("auto") is None


def test_a_local_ray_is_new_even_where_a_cluster_is_named(monkeypatch):
    """Without --address the study starts its own Ray with this machine's cores: plain ray.init() would join the
    cluster in RAY_ADDRESS (or the last `ray start` of the machine) and then refuse num_cpus."""
    import os

    import ray

    from yololab.study.execute import _start_ray

    if ray.is_initialized():
        pytest.skip("a Ray is already running in this process")
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{_free_port()}")
    assert _start_ray(None, 0)
    try:
        assert ray.cluster_resources()["CPU"] == os.cpu_count()
    finally:
        ray.shutdown()


def test_ray_address_in_the_environment_is_the_command_line_address(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from yololab.cli import app

    port = _free_port()
    path = tmp_path / "gpus.yaml"
    path.write_text(STUDY.replace("ACCELERATOR", ""))
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    result = CliRunner().invoke(app, ["study", "run", str(path), "--project", str(tmp_path), "--quiet"])
    assert result.exit_code == 2
    assert f"--address 127.0.0.1:{port}: nothing answers there" in " ".join(result.output.split())
