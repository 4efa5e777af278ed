"""Reading a run folder's JSON-lines files (metrics.jsonl, histograms.jsonl) with errors that name the line."""

from __future__ import annotations

import json
from pathlib import Path

from yololab.errors import FileProblem

ROW_KEYS = ("epoch", "split")  # what every metrics.jsonl row has
BEST_METRIC = "mAP50"  # the val metric best.ckpt is chosen on (engine/train.py BEST_METRIC "val/mAP50")
BEST_CHECKPOINT = "best.ckpt"  # in RUN/checkpoints/: the weights of the best val mAP50 epoch
HISTOGRAMS_FILE = "histograms.jsonl"
HISTOGRAM_KEYS = ("epoch", "edges", "histograms")  # what every histograms.jsonl row has
LR_FILE = "lr.jsonl"  # the learning rate of every training step: {"epoch", "step" (of its first batch), "lr": [..]}
LR_KEYS = ("epoch", "lr")


def best_epoch(rows: list[dict]) -> dict | None:
    """The val row with the highest mAP50, None if none: the first one on ties, because ModelCheckpoint
    replaces best.ckpt only on a strictly higher value, so this is the epoch that best.ckpt holds."""
    best = None
    for row in rows:
        value = row.get(BEST_METRIC)
        if row.get("split") == "val" and value is not None and (best is None or value > best[BEST_METRIC]):
            best = row
    return best


def read_jsonl(path: Path, required: tuple[str, ...] = ROW_KEYS,
               error: type[FileProblem] = FileProblem) -> list[dict]:
    """Objects of a JSON-lines file, one per non-blank line; ``error(path, line, problem)`` for a missing file,
    a line that is not JSON, or an object without the ``required`` keys or an integer epoch."""
    if not path.is_file():
        raise error(path, None, f"missing: a run folder has {path.name} (written during training)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise error(path, number, f"not valid JSON: {err.msg}") from None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int) or any(k not in row for k in required):
            raise error(path, number, f"expected an object with keys {', '.join(required)} and an integer epoch")
        rows.append(row)
    return unique_rows(rows)


def unique_rows(rows: list[dict]) -> list[dict]:
    """``rows`` with only the last row of each (epoch, split), at that last row's place: an interrupted run of
    an older yololab could repeat an epoch, and the later row is the one the resumed run went on from."""
    last = {(r.get("epoch"), r.get("split")): i for i, r in enumerate(rows)}
    return [r for i, r in enumerate(rows) if last[(r.get("epoch"), r.get("split"))] == i]


def read_histograms(run_dir: Path, error: type[FileProblem] = FileProblem) -> list[dict]:
    """The rows of ``run_dir/histograms.jsonl``; [] when the run did not record histograms."""
    path = Path(run_dir) / HISTOGRAMS_FILE
    return read_jsonl(path, HISTOGRAM_KEYS, error) if path.is_file() else []


def read_lr_steps(run_dir: Path, error: type[FileProblem] = FileProblem) -> list[dict]:
    """The rows of ``run_dir/lr.jsonl``; [] for a run that has none (recorded since the lr warm-up is plotted)."""
    path = Path(run_dir) / LR_FILE
    return read_jsonl(path, LR_KEYS, error) if path.is_file() else []
