"""results.csv and study.html of a study folder built by hand (no training): the numbers on the page are the
ones computed by hand from the runs' metrics."""

import csv
import json
from pathlib import Path

import pytest

from test_report import Page
from yololab.study import report_study
from yololab.study.execute import _claim
from yololab.study.spec import load_study
from yololab.study.trial import RunRecord, run_dir

STUDY = """\
data: data/digits/data.yaml
budget: {epochs: 2}
seeds: 3
factors:
  loss.obj_loss: [mse, bce, focal]
"""
# final val mAP50 per configuration and seed
MAP50 = {"obj_loss=mse": [0.50, 0.60, 0.55], "obj_loss=bce": [0.62, 0.70, 0.66], "obj_loss=focal": [0.45, 0.68, 0.52]}
STOPPED = ("obj_loss=focal", 2)  # ASHA stopped this run: left out of the statistics


def _rows(map50: float, seed: int) -> list[dict]:
    rows = []
    for epoch in range(2):
        for split, offset in (("train", 0.0), ("val", 0.1)):
            row = {"epoch": epoch, "split": split, "step": epoch + 1,
                   "loss/box/s0": 1.0 - 0.2 * epoch + offset + 0.01 * seed, "loss/obj/s0": 0.5 + offset * seed}
            if split == "val":
                row.update({"mAP50": map50 * (epoch + 1) / 2, "mAP50_95": map50 * (epoch + 1) / 4})
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    study_file = root / "obj.yaml"
    study_file.write_text(STUDY)
    study = load_study(study_file)
    study_dir = root / "out"
    _claim(study, study_dir)
    for configuration in study.configurations:
        for seed in study.seeds:
            run = run_dir(study_dir, configuration.name, seed)
            run.mkdir(parents=True)
            (run / "metrics.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in _rows(MAP50[configuration.name][seed], seed)))
            findings = [{"rule": "overfitting", "severity": "warning", "scale": 0, "term": "obj",
                         "message": "obj gap grows", "suggestion": "stop earlier", "changes": {"train.epochs": 1}}]
            (run / "findings.json").write_text(json.dumps(findings if seed < 2 else []))
            status = "stopped" if (configuration.name, seed) == STOPPED else "finished"
            RunRecord(configuration.name, configuration.levels, configuration.overrides, seed, status, 2,
                      1.5 + seed, None).write(run)
    report_study(study_dir)
    return study_dir


def _table(page: Page, first_header: str) -> list[list[str]]:
    return next(t for t in page.tables if t and t[0] and t[0][0] == first_header)


def test_results_csv_has_one_row_per_run(folder):
    with (folder / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 9
    assert list(rows[0]) == ["config", "loss.obj_loss", "seed", "status", "epochs", "val_mAP50", "val_mAP50_95",
                             "test_mAP50", "test_mAP50_95", "minutes", "findings"]
    first = rows[0]
    assert (first["config"], first["loss.obj_loss"], first["seed"], first["status"]) == ("obj_loss=mse", "mse",
                                                                                         "0", "finished")
    assert float(first["val_mAP50"]) == pytest.approx(0.50)  # the last val row, not the best epoch
    assert float(first["val_mAP50_95"]) == pytest.approx(0.25)
    assert first["test_mAP50"] == "" and first["findings"] == "overfitting/obj/s0"
    stopped = next(r for r in rows if r["status"] == "stopped")
    assert (stopped["config"], stopped["seed"], stopped["val_mAP50"]) == ("obj_loss=focal", "2", "")


def test_page_numbers_are_the_hand_computed_ones(folder):
    page = Page((folder / "study.html").read_text())
    configs = _table(page, "configuration")
    header, mse, bce, focal = configs[0], configs[1], configs[2], configs[3]
    col = header.index("mAP@0.5 mean ± sd")
    assert mse[col] == "0.5500 ± 0.0500"  # mean of 0.50, 0.60, 0.55; sd sqrt((0.05² + 0.05² + 0) / 2)
    assert bce[col] == "0.6600 ± 0.0400"
    assert focal[col] == "0.5650 ± 0.1626" and focal[header.index("seeds")] == "2 (+1 stopped)"
    # three values: the smallest and largest bootstrap means (all-min, all-max resamples) each have
    # probability 1/27 > 2.5 %, so the 95 % interval is exactly [min, max]
    assert mse[col + 1] == "0.5000 … 0.6000"

    diffs = _table(page, "factor")
    assert diffs[1][:4] == ["loss.obj_loss", "bce", "mse", "3"]
    assert diffs[1][4:6] == ["+0.1100", "+0.1000 … +0.1200"]  # paired: 0.12, 0.10, 0.11
    assert diffs[2][:4] == ["loss.obj_loss", "focal", "mse", "2"]
    assert diffs[2][4:6] == ["+0.0150", "−0.0500 … +0.0800"]  # paired over seeds 0 and 1: -0.05, +0.08

    verdicts = " ".join(page.section_text["verdicts"])
    assert "obj_loss=bce vs mse: +0.110 mAP@0.5 (95 % CI +0.100…+0.120, 3 seeds): bce is better." in verdicts
    assert ("obj_loss=focal vs mse: +0.015 mAP@0.5 (95 % CI −0.050…+0.080, 2 seeds): no difference beyond "
            "seed noise.") in verdicts


def test_gaps_findings_and_plots(folder):
    page = Page((folder / "study.html").read_text())
    gaps = next(t for t in page.tables if t[0][:2] == ["configuration", "scale"])
    assert gaps[0] == ["configuration", "scale", "box", "obj"]
    # val - train at the last epoch: box 0.1 for every seed; obj 0.1 * seed -> mean over seeds 0, 1, 2 = 0.1
    assert gaps[1] == ["obj_loss=mse", "s0", "0.1000", "0.1000"]
    findings = " ".join(page.section_text["findings"])
    assert "overfitting/obj/s0" in findings and "2 of 3: 0, 1" in findings
    assert len(page.section_imgs["map"]) == 1 and len(page.section_imgs["losses"]) == 1
    assert all(src.startswith("data:image/png;base64,") for src in page.imgs)
    assert page.sections[:4] == ["summary", "verdicts", "configurations", "differences"]


def test_results_csv_has_ap_by_size_columns_of_every_run_that_logged_them(tmp_path):
    from yololab.study.results import RunRow, size_aps, write_csv

    val = {"mAP50": 0.5, "mAP50_small": 0.2, "mAP50_95_small": 0.1, "mAP50_large": 0.9,
           "bin/3x2-5x4/mAP50": 0.05, "bin/6x6-40x40/mAP50": 0.4}
    assert size_aps(val, "val") == {"val_mAP50_small": 0.2, "val_mAP50_large": 0.9, "val_bin_3x2-5x4_mAP50": 0.05,
                                    "val_bin_6x6-40x40_mAP50": 0.4}
    study_file = tmp_path / "obj.yaml"
    study_file.write_text(STUDY)
    study = load_study(study_file)
    rows = [RunRow("obj_loss=mse", {"loss.obj_loss": "mse"}, seed, "finished", 2, 1.0, 0.5, 0.25, None, None,
                   tmp_path, [], size_aps(val, "val") if seed == 0 else {}) for seed in (0, 1)]
    with write_csv(study, rows, tmp_path / "results.csv").open() as handle:
        written = list(csv.DictReader(handle))
    assert list(written[0])[-5:] == ["val_mAP50_small", "val_mAP50_large", "val_bin_3x2-5x4_mAP50",
                                     "val_bin_6x6-40x40_mAP50", "findings"]
    assert [written[0]["val_bin_3x2-5x4_mAP50"], written[1]["val_bin_3x2-5x4_mAP50"]] == ["0.05", ""]


def test_test_ap_by_size_columns_come_from_an_eval_result():
    """A study run's test_metrics.json is ``yololab eval``'s result: its nested by_size / by_bin become
    ``test_…`` columns beside the val ones."""
    from yololab.evaluate.coco import size_metrics
    from yololab.study.results import size_aps

    test = {"mAP50": 0.5, "by_size": {size: {"mAP50": ap, "mAP50_95": ap / 2, "n_truths": 3}
                                      for size, ap in (("small", 0.1), ("medium", 0.3), ("large", 0.7))},
            "by_bin": {"tiny": {"mAP50": 0.05, "mAP50_95": 0.01, "n_truths": 2}}}
    assert size_aps(size_metrics(test), "test") == {"test_mAP50_small": 0.1, "test_mAP50_medium": 0.3,
                                                    "test_mAP50_large": 0.7, "test_bin_tiny_mAP50": 0.05}


def test_seed_bands_over_steps_line_up_runs_of_different_epoch_lengths():
    """A budget in steps: a run on all the images ends its epochs at steps 10 and 20, its share at 5, 10, 15
    and 20. Over steps, each configuration's seeds are averaged at the steps they share, by hand."""
    from yololab.study.curves import seed_band

    def rows(step_values):
        return [{"epoch": e, "split": "val", "step": step, "mAP50": v} for e, (step, v) in enumerate(step_values)]

    full = [rows([(10, 0.2), (20, 0.6)]), rows([(10, 0.4), (20, 0.8)])]
    share = [rows([(5, 0.1), (10, 0.2), (15, 0.3), (20, 0.4)]), rows([(5, 0.3), (10, 0.2), (15, 0.1), (20, 0.2)])]
    steps, mean, low, high = seed_band(full, "val", "mAP50", x="step")
    assert steps == [10, 20] and mean.tolist() == pytest.approx([0.3, 0.7])
    assert low.tolist() == pytest.approx([0.2, 0.6]) and high.tolist() == pytest.approx([0.4, 0.8])
    steps, mean, _, _ = seed_band(share, "val", "mAP50", x="step")
    assert steps == [5, 10, 15, 20] and mean.tolist() == pytest.approx([0.2, 0.2, 0.2, 0.3])
    assert seed_band(share, "val", "mAP50")[0] == [0, 1, 2, 3]  # the default x: epochs
