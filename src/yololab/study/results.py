"""What a study's run folders hold, one row per run, and ``results.csv``.

A row's val mAPs are the run's last val row (the weights it ends with, no choice of the best epoch on val);
test mAPs are its last checkpoint on the test split when the data has one.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from yololab import keys
from yololab.study.spec import Study
from yololab.study.trial import FINISHED, RUNS_DIR, final_val, read_record, run_name

RESULTS_FILE = "results.csv"
FINDINGS_FILE = "findings.json"  # written by the doctor inside every run folder


@dataclass
class RunRow:
    config: str
    levels: dict
    seed: int
    status: str
    epochs: int
    minutes: float
    val_mAP50: float | None
    val_mAP50_95: float | None
    test_mAP50: float | None
    test_mAP50_95: float | None
    folder: Path
    findings: list[dict] = field(default_factory=list)
    by_size: dict[str, float | None] = field(default_factory=dict)  # size column -> last val / test AP@0.5

    @property
    def finding_ids(self) -> list[str]:
        return [finding_id(f) for f in self.findings]


def finding_id(finding: dict) -> str:
    """``rule/term/s<scale>`` (the parts a finding has), e.g. ``overfitting/obj/s1``."""
    parts = [str(finding.get("rule"))]
    if finding.get("term"):
        parts.append(str(finding["term"]))
    if finding.get("scale") is not None:
        parts.append(f"s{finding['scale']}")
    return "/".join(parts)


def collect(study: Study, study_dir: Path) -> list[RunRow]:
    """The rows of every run with a record, in the study's order (configurations, then seeds)."""
    from yololab.evaluate.coco import size_metrics

    rows = []
    for folder in sorted((Path(study_dir) / RUNS_DIR).glob("*")):
        record = read_record(folder)
        if record is None:
            continue
        val = final_val(folder) if record.status == FINISHED else {}
        test = record.test or {}
        findings_path = folder / FINDINGS_FILE
        findings = json.loads(findings_path.read_text()) if findings_path.is_file() else []
        rows.append(RunRow(record.config, record.levels, record.seed, record.status, record.epochs,
                           record.minutes, val.get("mAP50"), val.get("mAP50_95"), test.get("mAP50"),
                           test.get("mAP50_95"), folder, findings,
                           size_aps(val, "val") | (size_aps(size_metrics(test), "test") if "by_size" in test else {})))
    order = {c.name: i for i, c in enumerate(study.configurations)}
    return sorted(rows, key=lambda r: (order.get(r.config, len(order)), r.config, r.seed))


def size_aps(metrics: dict, split: str) -> dict[str, float | None]:
    """AP@0.5 by object size of ``metrics`` (a val row, or ``size_metrics`` of a test result: logged names), as
    results.csv columns: ``<split>_mAP50_small`` … for COCO's area ranges, ``<split>_bin_<name>_mAP50`` for the
    dataset's own size bins (absent from runs measured without them)."""
    out = {f"{split}_{keys.size_key(keys.BIN_METRIC, size)}": metrics[keys.size_key(keys.BIN_METRIC, size)]
           for size in keys.COCO_SIZES if keys.size_key(keys.BIN_METRIC, size) in metrics}
    for key, value in metrics.items():
        parsed = keys.parse_bin_key(key)
        if parsed is not None and parsed[1] == keys.BIN_METRIC:
            out[f"{split}_bin_{parsed[0]}_{parsed[1]}"] = value
    return out


def missing_runs(study: Study, rows: list[RunRow]) -> list[str]:
    """Run names of the grid without a record (not run yet, or failed)."""
    done = {(r.config, r.seed) for r in rows}
    return [run_name(c.name, s) for c in study.configurations for s in study.seeds if (c.name, s) not in done]


def factor_keys(study: Study, rows: list[RunRow]) -> list[str]:
    keys = list(study.factors) or list(dict.fromkeys(k for r in rows for k in r.levels))
    return keys


def write_csv(study: Study, rows: list[RunRow], path: Path) -> Path:
    """``results.csv``: config, one column per factor, seed, status, epochs, val and test mAPs, minutes, val and test
    AP@0.5 by object size (``size_aps``; columns of every run that logged them), finding ids (space separated)."""
    factors = factor_keys(study, rows)
    sizes = list(dict.fromkeys(k for r in rows for k in r.by_size))
    header = ["config", *factors, "seed", "status", "epochs", "val_mAP50", "val_mAP50_95", "test_mAP50",
              "test_mAP50_95", "minutes", *sizes, "findings"]
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for r in rows:
            writer.writerow([r.config, *(r.levels.get(k, "") for k in factors), r.seed, r.status, r.epochs,
                             *(_cell(v) for v in (r.val_mAP50, r.val_mAP50_95, r.test_mAP50, r.test_mAP50_95,
                                                  r.minutes)), *(_cell(r.by_size.get(k)) for k in sizes),
                             " ".join(r.finding_ids)])
    return Path(path)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.6g}"
