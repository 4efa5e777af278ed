"""The numbered items of "no run lost or corrupted, whatever happens" not covered by tests/test_faults.py, one test
each (items 1, 3 and 4 are tested there): a failed ``--resume --set``, stale temporaries at the start of a run,
non-UTF-8 file names, checkpoints that would run code, cfg errors, one-line errors with nothing left on disk,
the flags ``--resume`` refuses, the clip policy for boxes past the edge, and TensorBoard after a resume.

Commands run through the console entry point (``yololab.cli.main``) in this process, so that the output is what
a user sees. Tiny runs: 8 images of 64 px, 2 steps an epoch (tests/fault_injection.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from fault_injection import STEPS_PER_EPOCH, TINY, finish, start_training, tiny_config
from yololab import cli
from yololab.config import OptimConfig
from yololab.data import load_data_yaml, make_digits, validation_cache
from yololab.data.yolo_format import BOX_TOLERANCE, validate_split
from yololab.engine.checkpoint import TEMPORARY_PATTERN, load_checkpoint_file
from yololab.engine.schedule import warmup_cosine
from yololab.engine.train import train
from yololab.model.build import read_cfg_text

EPOCHS = 3  # of the shared run
SETS = [f"--set={item}" for item in TINY]
FLAGGED = ("data.imgsz", "model.cfg")  # TINY values that a test's --imgsz or --cfg must not be overridden by
EXIT_USER_ERROR = 2  # cli.main: an input error
EXIT_STOPPED = 1  # a run stopped by a non-finite loss


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_digits(tmp_path_factory.mktemp("tiny"), n_train=8, n_val=4, n_test=4, img_size=64, seed=0)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> Path:
    """A finished 3-epoch run (not to be changed by tests: copy it)."""
    project = tmp_path_factory.mktemp("trained")
    train(tiny_config(tiny_data, project, "run", EPOCHS), progress="none")
    return project / "run"


def yololab(argv: list[str | Path], capfd) -> tuple[int, str]:
    """``yololab ARGV`` through the console entry point: (exit status, stdout and stderr)."""
    capfd.readouterr()
    saved = sys.argv
    sys.argv = ["yololab", *map(str, argv)]
    try:
        cli.main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv = saved
    captured = capfd.readouterr()
    return code, captured.out + captured.err


def one_error_line(output: str) -> str:
    """The one ``error:`` line of a command's output (no traceback, no message broken over lines)."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_run(run: Path, project: Path, name: str = "run") -> Path:
    shutil.copytree(run, project / name)
    return project / name


def resume_argv(run: Path, *extra: str) -> list[str | Path]:
    return ["train", "--project", run.parent, "--name", run.name, "--resume", "--progress", "none", *extra]


def train_argv(data: Path, project: Path, *extra: str) -> list[str | Path]:
    """A new 1-epoch run PROJECT/run on the tiny settings; ``extra`` flags win over them."""
    sets = [s for s in SETS if not any(f"={key}=" in s and f"--{key.split('.')[1]}" in extra for key in FLAGGED)]
    return ["train", "--data", data, "--epochs", "1", "--project", project, "--name", "run", "--progress", "none",
            *sets, *extra]


# ------------------------------------------------------------------------------------------------ item 2
def test_item2_a_failed_resume_set_is_not_saved(trained, tmp_path, capfd):
    run = copy_run(trained, tmp_path)
    config = (run / "config.yaml").read_bytes()
    # Non-finite numbers are refused when the config is validated, before anything runs.
    code, out = yololab(resume_argv(run, "--epochs", "4", "--set", "loss.obj_weight=.inf"), capfd)
    assert code == EXIT_USER_ERROR
    assert one_error_line(out) == "error: invalid configuration: loss.obj_weight = inf is not a finite number"
    code, out = yololab(resume_argv(run, "--epochs", "4", "--set", "optim.momentum=.nan"), capfd)
    assert one_error_line(out) == "error: invalid configuration: optim.momentum = nan is not a finite number"
    # A finite learning rate that blows the weights up: the resumed epoch's first step (step 7) is finite, the
    # second is not. The run stops there, and its --set never reaches config.yaml.
    code, out = yololab(resume_argv(run, "--epochs", "4", "--set", "optim.lr=1e30"), capfd)
    assert code == EXIT_STOPPED
    line = one_error_line(out)
    assert f"stopped at epoch {EPOCHS + 1}, step {EPOCHS * STEPS_PER_EPOCH + 2}: non-finite loss" in line, line
    assert (run / "config.yaml").read_bytes() == config
    code, out = yololab(resume_argv(run, "--epochs", "4"), capfd)
    assert code == 0, out
    assert load_checkpoint_file(run / "checkpoints" / "last.ckpt")["epoch"] == EPOCHS
    saved = yaml.safe_load(config)
    saved["project"], saved["train"]["epochs"] = str(run.parent), 4  # the copy is the run (item 1)
    assert yaml.safe_load((run / "config.yaml").read_text()) == saved


def test_item2_a_resumed_run_trains_with_its_new_learning_rate(trained, tmp_path, capfd):
    """config.yaml holds what the run used: a resumed run's --set optim.lr is the peak of its schedule from then
    on (the checkpoint's optimiser and schedule states hold the old peak), and another optimiser is refused."""
    run = copy_run(trained, tmp_path)
    defaults = OptimConfig()
    assert load_checkpoint_file(run / "checkpoints" / "last.ckpt")["lr_schedulers"][0]["base_lrs"] == [defaults.lr] * 2
    code, out = yololab(resume_argv(run, "--set", "optim.optimizer=sgd"), capfd)
    assert code == EXIT_USER_ERROR
    assert one_error_line(out) == (f"error: {run / 'checkpoints' / 'last.ckpt'} holds the optimiser state of "
                                   "optim.optimizer=adamw: "
                                   "a resumed run keeps it (drop --set optim.optimizer=sgd, or start a new run)")
    new_lr, epochs = 1e-4, EPOCHS + 1
    code, out = yololab(resume_argv(run, "--epochs", str(epochs), "--set", f"optim.lr={new_lr}"), capfd)
    assert code == 0, out
    (row,) = [r for r in map(json.loads, (run / "lr.jsonl").read_text().splitlines()) if r["epoch"] == EPOCHS]
    # Linear warm-up over the first epoch, then cosine to final_lr_fraction over all 4 epochs' steps.
    total, warmup = epochs * STEPS_PER_EPOCH, round(defaults.warmup_epochs * STEPS_PER_EPOCH)
    steps = range(EPOCHS * STEPS_PER_EPOCH, epochs * STEPS_PER_EPOCH)
    assert row["lr"] == pytest.approx([new_lr * warmup_cosine(s, total, warmup, defaults.final_lr_fraction)
                                       for s in steps], rel=1e-12)


# ------------------------------------------------------------------------------------------------ item 5
def test_item5_stale_temporaries_are_removed_at_start_and_resume(trained, tiny_data, tmp_path, capfd, caplog):
    stale = ".last.ckpt.k1ll3d.tmp"
    assert Path(stale).match(TEMPORARY_PATTERN)
    # At the start of a new run in a folder a killed run left (no config.yaml: it never got that far).
    fresh = tmp_path / "fresh" / "run"
    (fresh / "checkpoints").mkdir(parents=True)
    (fresh / "checkpoints" / stale).write_bytes(b"half a checkpoint")
    code, out = yololab(train_argv(tiny_data, tmp_path / "fresh"), capfd)
    assert code == 0, out
    assert not (fresh / "checkpoints" / stale).exists()
    assert f"removed {fresh / 'checkpoints' / stale}, left by a checkpoint write that was killed" in caplog.text
    # At a resume (the run is finished: nothing to train, the folder is put in order).
    run = copy_run(trained, tmp_path)
    (run / "checkpoints" / stale).write_bytes(b"half a checkpoint")
    code, out = yololab(resume_argv(run, "--epochs", str(EPOCHS)), capfd)
    assert code == 0, out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


# ------------------------------------------------------------------------------------------------ items 6, 11
ODD_SKIPPED = b"img\xff.png"  # not UTF-8; its label has a bad line: skipped under data.skip_bad
ODD_CLIPPED = b"img\xfe.png"  # not UTF-8; its label has a box past the right edge: clipped
PAST_EDGE = (0.95, 0.5, 0.2, 0.2)  # cx cy w h: x from 0.85 to 1.05


def _odd_file(data: Path, kind: str, name: bytes) -> bytes:
    """The path (bytes) of an odd training image of the data.yaml ``data`` (``kind`` images) or of its label
    file (``kind`` labels)."""
    if kind == "labels":
        name = name[: -len(b".png")] + b".txt"
    return os.fsencode(data.parent / kind / "train") + b"/" + name


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory) -> Path:
    """Tiny digits whose first two training images have names that are not UTF-8 (bytes on disk)."""
    yaml_path = make_digits(tmp_path_factory.mktemp("odd"), n_train=10, n_val=4, n_test=4, img_size=64, seed=0)
    for index, name in enumerate((ODD_SKIPPED, ODD_CLIPPED)):
        for kind, suffix in (("images", "png"), ("labels", "txt")):
            os.rename(yaml_path.parent / kind / "train" / f"{index:06d}.{suffix}", _odd_file(yaml_path, kind, name))
    for name, line in ((ODD_SKIPPED, "0 0.5 0.5 0.1 nan"), (ODD_CLIPPED, "3 {} {} {} {}".format(*PAST_EDGE))):
        with open(_odd_file(yaml_path, "labels", name), "a") as handle:
            handle.write(line + "\n")
    return yaml_path


@pytest.fixture(scope="module")
def odd_run(odd_data, tmp_path_factory) -> tuple[Path, list[str]]:
    """One epoch on ``odd_data`` with data.skip_bad and data.boxes_outside=clip: (run folder, its warnings)."""
    project = tmp_path_factory.mktemp("odd-run")
    cfg = tiny_config(odd_data, project, "run", 1, ["data.skip_bad=true", "data.boxes_outside=clip"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg, progress="none")  # no UnicodeEncodeError on the way
    return cfg.run_dir, [str(w.message) for w in caught]


def test_item6_file_names_that_are_not_utf8(odd_data, odd_run, monkeypatch):
    run, _ = odd_run
    label = _odd_file(odd_data, "labels", ODD_SKIPPED)
    bad_line = len(open(label, "rb").read().splitlines())  # appended last
    # The list holds the names as the bytes they have on disk.
    assert (run / "skipped_images.txt").read_bytes() == (
        _odd_file(odd_data, "images", ODD_SKIPPED) + b"\t" + label
        + b":%d: non-finite value in '0 0.5 0.5 0.1 nan'\n" % bad_line)
    # The validation cache keyed and stored the odd names: validating the split again reads them back from it.
    monkeypatch.setattr(validation_cache, "validate_split", None)  # a fresh validation would fail here
    report = validation_cache.validate_cached(load_data_yaml(odd_data).splits["train"], 10,
                                              run.parent / ".cache" / "validation", boxes_outside="clip")
    assert [(os.fsencode(p.file), p.line) for p in report.problems] == [(label, bad_line)]
    assert [os.fsencode(p.file) for p in report.clipped] == [_odd_file(odd_data, "labels", ODD_CLIPPED)]


def test_item11_boxes_outside_clip(odd_data, odd_run, tmp_path, capfd):
    label = _odd_file(odd_data, "labels", ODD_CLIPPED)
    line_number = len(open(label, "rb").read().splitlines())  # the box past the edge was appended last
    cx, cy, w, h = PAST_EDGE
    x1, x2 = cx - w / 2, 1.0  # 0.85 .. 1.05, clipped to 0.85 .. 1
    assert cx + w / 2 > 1 + BOX_TOLERANCE  # beyond the rounding tolerance: the policy decides
    image = Path(os.fsdecode(_odd_file(odd_data, "images", ODD_CLIPPED)))
    refused = validate_split([image], 10)
    assert [(p.line, "lies outside the image" in p.problem) for p in refused.problems] == [(line_number, True)]
    report = validate_split([image], 10, boxes_outside="clip")
    assert report.problems == [] and [p.line for p in report.clipped] == [line_number]
    assert report.labels[0][-1].tolist() == pytest.approx([3, (x1 + x2) / 2, cy, x2 - x1, h], abs=1e-6)
    # train counts and lists every clipped box, in the log and in a file.
    run, messages = odd_run
    listed = (run / "clipped_boxes.txt").read_bytes().splitlines()
    assert len(listed) == 1 and listed[0].startswith(label + b":%d: box x 0.85..1.05," % line_number)
    assert any(m.startswith("clipped 1 boxes to their image (data.boxes_outside=clip)") for m in messages)
    # yololab data check refuses the box by default, and shows what the clip policy would clip.
    data = tmp_path / "data"
    shutil.copytree(odd_data.parent, data)
    spec = yaml.safe_load((data / "data.yaml").read_text())
    (data / "data.yaml").write_text(yaml.safe_dump({**spec, "path": str(data)}))
    nan_label = _odd_file(data / "data.yaml", "labels", ODD_SKIPPED)
    os.unlink(nan_label)  # leave only the box past the edge to report
    code, out = yololab(["data", "check", data / "data.yaml"], capfd)
    assert code == 1 and out.rstrip().endswith("1 errors, 0 warnings"), out
    code, out = yololab(["data", "check", data / "data.yaml", "--boxes-outside", "clip"], capfd)
    assert code == 0, out
    assert out.rstrip().endswith("0 errors, 0 warnings, 1 boxes clipped"), out
    clipped = [line for line in out.splitlines() if ": clipped: " in line]
    shown = _odd_file(data / "data.yaml", "labels", ODD_CLIPPED).decode("utf-8", "backslashreplace")  # img\\xfe
    assert clipped == [f"{shown}:{line_number}: clipped: "
                       f"box x 0.85..1.05, y 0.4..0.6 lies outside the image [0, 1]: clipped to it "
                       "(data.boxes_outside=clip)"]


# ------------------------------------------------------------------------------------------------ item 7
class _WritesAFile:
    """What a crafted checkpoint holds: unpickling it calls Path.write_text on ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_item7_a_checkpoint_that_would_run_code_is_refused(tmp_path, capfd, monkeypatch):
    marker, evil = tmp_path / "marker", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": _WritesAFile(marker)}, evil)
    image = tmp_path / "image.png"
    Image.new("RGB", (64, 64)).save(image)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's switch back to the old default
    for argv in (["eval", evil], ["detect", evil, image, "--out", tmp_path / "detect"], ["export", evil]):
        code, out = yololab(argv, capfd)
        assert code == EXIT_USER_ERROR
        line = one_error_line(out)
        assert re.fullmatch(rf"error: {re.escape(str(evil))}: refused: it needs the Python object \S*getattr, which "
                            "could run code when loaded; yololab loads checkpoints with tensors and plain data only",
                            line), line  # the method is pickled as getattr(PosixPath, "write_text")
        assert "weights_only" not in line  # no advice to load it unsafely
        assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.ckpt", "image.png"]  # nothing written either
    # The payload is real: the old default would have run it.
    torch.load(evil, weights_only=False)
    assert marker.read_text() == "code ran"


def test_item7_every_torch_load_in_src_is_weights_only():
    src = Path(cli.__file__).parent
    loads = [(p, m.group(0)) for p in sorted(src.rglob("*.py"))
             for m in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", p.read_text())]
    assert loads and all("weights_only=True" in call for _, call in loads), loads


# ------------------------------------------------------------------------------------------------ item 8
def _cfg_lines(text: str, header: str) -> int:
    """1-based line of the first ``header`` in cfg text."""
    return next(i for i, line in enumerate(text.splitlines(), start=1) if line.strip() == header)


def test_item8_cfg_errors_show_sections_and_the_users_file(tiny_data, tmp_path, capfd):
    text = read_cfg_text("yolov3-tiny-small")
    unknown = tmp_path / "unknown section.cfg"
    unknown.write_text(text.replace("[maxpool]", "[frobnicate]", 1))
    code, out = yololab(train_argv(tiny_data, tmp_path, "--cfg", str(unknown)), capfd)
    assert code == EXIT_USER_ERROR
    line = one_error_line(out)
    assert line.startswith(f"error: {unknown}:{_cfg_lines(text, '[maxpool]')}: unknown section type [frobnicate]")
    # No [net] section at all: its header and keys gone, the first section is a [convolutional].
    lines = text.splitlines()
    start = _cfg_lines(text, "[net]")
    end = _cfg_lines(text, "[convolutional]")
    no_net = tmp_path / "no-net.cfg"
    no_net.write_text("\n".join(lines[:start - 1] + lines[end - 1:]) + "\n")
    for imgsz in ([], ["--imgsz", "64"]):  # the input size from [net], or given
        code, out = yololab(train_argv(tiny_data, tmp_path, "--cfg", str(no_net), *imgsz), capfd)
        assert code == EXIT_USER_ERROR
        assert one_error_line(out) == f"error: {no_net}:{start}: the first section must be [net], found [convolutional]"
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------ item 9
def test_item9_imgsz_not_a_multiple_of_the_stride(tiny_data, tmp_path, capfd):
    for _ in range(2):  # the second identical command fails the same way: nothing was left to be "a run"
        code, out = yololab(train_argv(tiny_data, tmp_path, "--imgsz", "100"), capfd)
        assert code == EXIT_USER_ERROR
        assert out.strip() == ("error: data.imgsz 100 is not a multiple of the cfg's maximum stride 32: use 96 or 128")
    assert list(tmp_path.iterdir()) == []


def test_item9_data_yaml_without_val(tiny_data, tmp_path, capfd):
    spec = yaml.safe_load(tiny_data.read_text())
    del spec["val"]
    no_val = tmp_path / "no-val.yaml"
    no_val.write_text(yaml.safe_dump(spec))
    project = tmp_path / "runs"
    code, out = yololab(train_argv(no_val, project), capfd)
    assert code == EXIT_USER_ERROR
    assert out.strip() == (f"error: {no_val}: no 'val' split: training validates every epoch (add 'val: images/val', "
                           "or make one with 'yololab data split')")
    assert not project.exists()


def test_item9_eval_of_a_split_the_data_has_not(trained, tmp_path, capfd):
    run = copy_run(trained, tmp_path)
    before = files(run)
    code, out = yololab(["eval", run, "--split", "nosuch"], capfd)
    assert code == EXIT_USER_ERROR
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]["data"]
    assert one_error_line(out) == f"error: {data}: no 'nosuch' split (it has train, val, test)"
    assert files(run) == before


def test_item9_resume_with_a_checkpoint_of_another_cfg(trained, tmp_path, capfd):
    run = copy_run(trained, tmp_path)
    before = files(run)
    code, out = yololab(resume_argv(run, "--set", "model.cfg=yolov3-tiny-3l-small"), capfd)
    assert code == EXIT_USER_ERROR
    line = one_error_line(out)
    assert line.startswith(f"error: {run / 'checkpoints' / 'last.ckpt'}: was trained with another cfg or class count")
    assert "Unexpected key" not in out and "Missing key" not in out
    assert files(run) == before


def test_item9_eval_of_a_checkpoint_of_another_cfg(trained, tmp_path, capfd):
    checkpoint = load_checkpoint_file(trained / "checkpoints" / "last.ckpt")
    checkpoint["hyper_parameters"]["cfg_text"] = read_cfg_text("yolov3-tiny-3l-small")  # 3 heads, not 2
    other = tmp_path / "other.ckpt"
    torch.save(checkpoint, other)
    code, out = yololab(["eval", other, "--split", "val"], capfd)
    assert code == EXIT_USER_ERROR
    line = one_error_line(out)
    assert line.startswith(f"error: {other}: its weights do not fit the model its cfg describes: ")
    assert "weights missing (e.g. model.layers." in line
    assert "Error(s) in loading" not in out and "Unexpected key" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.ckpt"]


def test_item9_non_finite_loss(tiny_data, tmp_path, capfd):
    # optim.lr=1e30: the first step is finite and blows the weights up; the second is not.
    project = tmp_path / "runs"
    code, out = yololab(train_argv(tiny_data, project, "--set", "optim.lr=1e30"), capfd)
    assert code == EXIT_STOPPED
    line = one_error_line(out)
    assert re.search(r"stopped at epoch 1, step 2: non-finite loss in term\(s\) \['\w+/s[01]'", line), line
    assert line.endswith("no epoch had finished, so nothing was kept: run the command again")
    assert not (project / "run").exists()
    # A loss that is not finite from the start stops in the sanity check, before the first step.
    code, out = yololab(train_argv(tiny_data, project, "--set", "loss.obj_weight=1e39"), capfd)
    assert code == EXIT_STOPPED
    line = one_error_line(out)
    assert "stopped in the validation sanity check before epoch 1, step 1: non-finite loss in term(s) ['obj/s" in line
    assert not (project / "run").exists()


# ------------------------------------------------------------------------------------------------ item 10
@pytest.mark.parametrize("flag", [["--data", "x.yaml"], ["--cfg", "yolov3-tiny"], ["--preset", "darknet"],
                                  ["--imgsz", "96"], ["--batch", "2"], ["--config", "c.yaml"], ["--exist-ok"]])
def test_item10_resume_refuses_flags_of_a_new_run(trained, tmp_path, capfd, flag):
    run = copy_run(trained, tmp_path)
    before = files(run)
    code, out = yololab(resume_argv(run, *flag), capfd)
    assert code == EXIT_USER_ERROR
    assert out.strip() == (f"error: --resume continues a run with its own config.yaml; only --epochs and --set "
                           f"apply, so drop {flag[0]} (or use --set, e.g. --set data.batch=8)")
    assert files(run) == before


# ------------------------------------------------------------------------------------------------ TensorBoard
def _tensorboard_points(run: Path) -> Counter:
    """(tag, step) -> how often a reader of RUN/tb sees it (scalars and histograms), after TensorBoard's own
    purge of the events a resumed run logged again."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    return Counter([(tag, e.step) for tag in tags["scalars"] for e in events.Scalars(tag)]
                   + [(tag, e.step) for tag in tags["histograms"] for e in events.Histograms(tag)])


def _made_this_second(event_file: Path) -> None:
    """Rename a TensorBoard event file as if it had been made in the current second (the second is the 4th
    part of its name): what a run killed and resumed within a second leaves."""
    parts = event_file.name.split(".")
    parts[3] = f"{int(time.time()):010d}"
    event_file.rename(event_file.with_name(".".join(parts)))


@pytest.mark.parametrize("where", ["after", "write"])
def test_tensorboard_holds_each_step_once_after_a_resume(tiny_data, trained, tmp_path, where):
    """Killed between the checkpoint of epoch 2 and its metrics rows (the epoch's training means not yet logged,
    "after"), or while that checkpoint was written (epoch 2 logged, and to be trained again, "write"; its event
    file as if made in the second of the resume), then resumed: TensorBoard shows what the run that was never
    stopped shows, each (tag, step) as often; lr.jsonl is that run's."""
    cfg = tiny_config(tiny_data, tmp_path, "run", EPOCHS)
    kill = {"save_number": 2, "where": where, "byte": 4096}
    assert finish(start_training(cfg, kill)) == -signal.SIGKILL
    if where == "write":
        (event_file,) = (cfg.run_dir / "tb").glob("events.out.tfevents.*")
        _made_this_second(event_file)
    train(tiny_config(tiny_data, tmp_path, "run", EPOCHS), resume=True, progress="none")
    resumed, reference = _tensorboard_points(cfg.run_dir), _tensorboard_points(trained)
    assert resumed == reference
    # An "epoch" scalar goes with each logging call (Lightning's of the validation means, MetricsJsonl's of the
    # training means): twice a step; every other tag once.
    assert {n for (tag, _), n in reference.items() if tag != "epoch"} == {1}
    steps = sorted({step for tag, step in reference if tag == "train/loss/total"})
    assert steps == [(e + 1) * STEPS_PER_EPOCH - 1 for e in range(EPOCHS)]
    assert {n for (tag, _), n in reference.items() if tag == "epoch"} == {2}
    # The per-step lr log too, whose row of the checkpoint's epoch a kill after the checkpoint left unwritten.
    assert (cfg.run_dir / "lr.jsonl").read_text() == (trained / "lr.jsonl").read_text()
