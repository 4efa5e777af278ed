"""The HTML report of a run (``write_report``) and of several runs side by side (``compare_runs``).

One self-contained file: inline CSS, plots embedded as base64 PNG data URIs, no script, no external
resource. A run folder holds ``config.yaml``, ``metrics.jsonl``, and optionally ``anchor_fit.json`` and
``findings.json`` (the doctor's list of findings) and ``histograms.jsonl`` (validation histograms); a
missing optional file leaves its section with a note.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from yololab.diagnostics import plots
from yololab.diagnostics.runfiles import BEST_METRIC, ROW_KEYS, read_histograms, read_jsonl
from yololab.diagnostics.threshold_plots import thresholds_section
from yololab.errors import FileProblem

REPORT_NAME = "report.html"
TEST_METRICS = "test_metrics.json"
TEST_KEYS = ("mAP50", "mAP50_95", "n_images")  # what the summary shows of test_metrics.json
DIGITS = 4  # decimals shown for losses, IoUs, mAPs
SMALL = 10.0 ** -(DIGITS - 1)  # below this, significant digits instead of decimals
# Severity -> background colour of its findings-table row; unknown severities get NEUTRAL.
SEVERITY_COLOURS = {"error": "#f8d0d0", "critical": "#f8d0d0", "warning": "#fbe6c2", "warn": "#fbe6c2",
                    "info": "#d6e6f8"}
NEUTRAL = "#eeeeee"
GRAD_SHARE_NOTE = ("Each term's share of the gradient norm with respect to the raw head outputs, among the terms "
                   "of its scale (train, on one fixed batch, mean over the epoch's measurements): the term near "
                   "1 is the one driving that head.")
FINDING_COLUMNS = ("severity", "rule", "scale", "term", "first_epoch", "message", "suggestion", "numbers",
                   "changes")
CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1500px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-family: monospace; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.none { color: #777; font-style: italic; }
"""


class ReportError(FileProblem):
    """A run folder or one of its files that cannot be reported; the message names file and line."""


@dataclass
class Run:
    """What a report reads from one run folder."""

    path: Path
    name: str
    config: dict
    config_text: str
    rows: list[dict]
    anchor_fit: dict | None = None
    findings: list[dict] | None = None
    histograms: list[dict] = field(default_factory=list)
    test: dict | None = None  # test_metrics.json (``yololab demo`` writes it after training)
    label: str = field(default="")

    def __post_init__(self) -> None:
        self.label = self.label or self.name


# ----------------------------------------------------------------------------------------- reading


def load_run(run_dir: str | Path) -> Run:
    """Read a run folder; raises ReportError for a missing folder, metrics.jsonl or config.yaml, or bad files."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(run_dir, None, "not a run folder (no such directory)")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ReportError(config_path, None, "missing: a run folder has config.yaml")
    config_text = config_path.read_text()
    try:
        config = yaml.safe_load(config_text) or {}
    except yaml.YAMLError as err:
        line = err.problem_mark.line + 1 if getattr(err, "problem_mark", None) else None
        raise ReportError(config_path, line, f"not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise ReportError(config_path, None, "expected a mapping at the top level")
    findings = _read_json(run_dir / "findings.json", list)
    for i, finding in enumerate(findings or []):
        if not isinstance(finding, dict):
            raise ReportError(run_dir / "findings.json", None, f"finding {i} is not an object")
    histograms = read_histograms(run_dir, ReportError)
    return Run(path=run_dir, name=str(config.get("name") or run_dir.name), config=config,
               config_text=config_text, rows=read_rows(run_dir / "metrics.jsonl"),
               anchor_fit=_read_json(run_dir / "anchor_fit.json", dict), findings=findings,
               histograms=histograms, test=_read_json(run_dir / TEST_METRICS, dict))


def read_rows(path: Path, required: tuple[str, ...] = ROW_KEYS) -> list[dict]:
    """Rows of a JSON-lines file (metrics.jsonl); ReportError naming the line for bad JSON or missing keys."""
    return read_jsonl(path, required, ReportError)


def _read_json(path: Path, kind: type):
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(path, err.lineno, f"not valid JSON: {err.msg}") from None
    if not isinstance(value, kind):
        raise ReportError(path, None, f"expected a JSON {'list' if kind is list else 'object'}")
    return value


# ----------------------------------------------------------------------------------------- numbers


def best_epoch(rows: list[dict]) -> dict | None:
    """The val row with the highest mAP50 (first one on ties, as ModelCheckpoint keeps); None if none."""
    best = None
    for row in rows:
        value = row.get(BEST_METRIC)
        if row.get("split") == "val" and value is not None and (best is None or value > best[BEST_METRIC]):
            best = row
    return best


def final_row(rows: list[dict], split: str = "val") -> dict | None:
    """The last row of ``split``."""
    chosen = [row for row in rows if row.get("split") == split]
    return chosen[-1] if chosen else None


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        # small values (learning rates, obj_neg) would print as 0.0000 with fixed decimals
        return f"{value:.{DIGITS}g}" if 0 < abs(value) < SMALL else f"{value:.{DIGITS}f}"
    if isinstance(value, list | dict):
        return json.dumps(_rounded(value), default=str)
    return str(value)


def _rounded(value):
    """Floats inside lists and dicts (a finding's numbers) to DIGITS significant digits, for reading."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{DIGITS}g}")
    return value


# ----------------------------------------------------------------------------------------- html


def _e(value) -> str:
    return html.escape(_fmt(value))


def _table(header: list[str], body: list[list], row_styles: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    lines = []
    for i, row in enumerate(body):
        style = f' style="background:{row_styles[i]}"' if row_styles else ""
        cells = "".join(f'<td class="num">{_e(v)}</td>' if isinstance(v, int | float) and not isinstance(v, bool)
                        else f"<td>{_e(v)}</td>" for v in row)
        lines.append(f"<tr{style}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def _img(fig, alt: str) -> str:
    if fig is None:
        return f'<p class="none">no {html.escape(alt)} logged</p>'
    return f'<img alt="{html.escape(alt)}" src="{plots.data_uri(fig)}">'


def _page(title: str, sections: list[tuple[str, str, str]]) -> str:
    """``sections``: (id, heading, inner html) in page order."""
    body = "".join(f'<section id="{sid}"><h2>{html.escape(heading)}</h2>{inner}</section>'
                   for sid, heading, inner in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def _summary(run: Run) -> str:
    cfg = run.config
    best = best_epoch(run.rows)
    epochs_run = len({row["epoch"] for row in run.rows if row.get("split") == "train"})
    items = [
        ("name", run.name), ("folder", str(run.path)), ("preset", cfg.get("preset")),
        ("model cfg", (cfg.get("model") or {}).get("cfg")), ("data", (cfg.get("data") or {}).get("data")),
        ("epochs (run / configured)", f"{epochs_run} / {_fmt((cfg.get('train') or {}).get('epochs'))}"),
        ("best val mAP50", best and best.get("mAP50")), ("best val mAP50_95", best and best.get("mAP50_95")),
        ("best epoch", best and best["epoch"]),
    ]
    if run.test is not None:
        items += [(f"test {key}", run.test.get(key)) for key in TEST_KEYS]
    return _table(["", "value"], [list(item) for item in items])


def _findings(findings: list[dict] | None) -> str:
    if findings is None:
        return '<p class="none">no findings.json in this run (run <code>yololab doctor</code>)</p>'
    if not findings:
        return "<p>the doctor found nothing to report</p>"
    styles = [SEVERITY_COLOURS.get(str(f.get("severity", "")).lower(), NEUTRAL) for f in findings]
    return _table(list(FINDING_COLUMNS), [[f.get(c) for c in FINDING_COLUMNS] for f in findings], styles)


def _anchor_fit(fit: dict | None) -> str:
    if fit is None:
        return '<p class="none">no anchor_fit.json in this run</p>'
    per_scale = {k: v for k, v in fit.items() if k.endswith("_per_scale") or k == "strides"}
    overall = [[k, v] for k, v in fit.items() if k not in per_scale and k not in ("anchors", "share_per_anchor")]
    out = _table(["measure", "value"], overall)
    if "anchors" in fit:
        shares = fit.get("share_per_anchor") or [None] * len(fit["anchors"])
        out += _table(["anchor", "w x h (px)", "share of truths (best IoU)"],
                      [[i, " x ".join(f"{x:.1f}" for x in a), s] for i, (a, s) in
                       enumerate(zip(fit["anchors"], shares, strict=False))])
    if per_scale:
        n = max(len(v) for v in per_scale.values() if isinstance(v, list))
        keys = list(per_scale)
        body = [[f"s{i}", *(per_scale[k][i] if i < len(per_scale[k]) else None for k in keys)] for i in range(n)]
        out += _table(["scale", *keys], body)
    return out


def _grad_shares(runs: list[Run]) -> str:
    """The gradient-share note and plot; panel titles name the stride when every run's anchor fit agrees on it."""
    known = {tuple(r.anchor_fit["strides"]) if r.anchor_fit and "strides" in r.anchor_fit else None for r in runs}
    strides = list(known.pop()) if len(known) == 1 and None not in known else None
    fig = plots.grad_share_grid([(r.label, r.rows) for r in runs], strides)
    return f"<p>{html.escape(GRAD_SHARE_NOTE)}</p>" + _img(fig, "gradient shares")


def _config(run: Run) -> str:
    return f"<details><summary>config.yaml</summary><pre>{html.escape(run.config_text)}</pre></details>"


def write_report(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write the report of one run to ``path`` (default ``run_dir/report.html``); returns the path.

    Sections, in order: summary with the resolved config, findings, loss curves (rows = scales, columns =
    terms; train solid, val dashed), gradient shares per scale, statistics per scale, lr and warm-up share,
    validation histograms, mAP, anchor fit. The gradient shares follow the loss curves because they tell
    which of those terms actually drives each head. Raises ReportError for a missing or bad run file.
    """
    run = load_run(run_dir)
    path = Path(path) if path is not None else run.path / REPORT_NAME
    curves = [(run.label, run.rows)]
    sections = [
        ("summary", "Summary", _summary(run) + _config(run)),
        ("findings", "Findings", _findings(run.findings)),
        ("losses", "Loss terms: train (solid) vs val (dashed)", _img(plots.loss_grid(curves), "loss terms")),
        ("grad_shares", "Gradient shares", _grad_shares([run])),
        ("statistics", "Statistics per scale", _img(plots.stats_grid(curves), "statistics")),
        ("schedule", "Learning rate and warm-up", _img(plots.schedule_plot(curves), "learning rate")),
        ("histograms", "Validation histograms", _img(plots.histogram_grid([(run.label, run.histograms)]),
                                                      "histograms")),
        ("map", "Validation mAP", _img(plots.map_plot(curves), "mAP")),
        thresholds_section(run.path),
        ("anchors", "Anchor fit", _anchor_fit(run.anchor_fit)),
    ]
    path.write_text(_page(f"yololab report: {run.name}", sections), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------- compare


def load_runs(run_dirs: list[str | Path]) -> list[Run]:
    """``load_run`` of each folder; labels are the run names, made unique with the folder when two match."""
    runs = [load_run(d) for d in run_dirs]
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.label = f"{run.name} ({run.path})"
    return runs


def final_metrics(run: Run) -> dict:
    """The final-metrics row of ``compare_runs``: last val mAPs, val loss/total and per-scale val iou."""
    last = final_row(run.rows, "val") or {}
    scales, _ = plots.scales_and_terms(run.rows)
    best = best_epoch(run.rows)
    return {"run": run.label, "epoch": last.get("epoch"), "val mAP50": last.get("mAP50"),
            "val mAP50_95": last.get("mAP50_95"), "val loss/total": last.get("loss/total"),
            "best mAP50 (epoch)": f"{_fmt(best['mAP50'])} ({best['epoch']})" if best else None,
            **{f"val iou s{s}": last.get(f"stat/iou/s{s}") for s in scales}}


def compare_runs(run_dirs: list[str | Path], path: str | Path) -> Path:
    """Write one HTML page overlaying the curves of several runs (one colour per run); returns the path.

    Sections: final metrics table (last val row of each run), each run's findings, loss curves, gradient
    shares (term = line style and marker), statistics, lr and warm-up, validation histograms (last epoch),
    mAP, and each run's config.
    Raises ReportError for a bad run folder.
    """
    if not run_dirs:
        raise ReportError(Path(path), None, "no runs to compare")
    runs = load_runs(run_dirs)
    rows = [final_metrics(r) for r in runs]
    header = list(dict.fromkeys(k for row in rows for k in row))
    curves = [(r.label, r.rows) for r in runs]
    findings = "".join(f"<h3>{html.escape(r.label)}</h3>{_findings(r.findings)}" for r in runs)
    configs = "".join(f"<h3>{html.escape(r.label)}</h3>{_config(r)}" for r in runs)
    sections = [
        ("final", "Final metrics", _table(header, [[row.get(k) for k in header] for row in rows])),
        ("findings", "Findings", findings),
        ("losses", "Loss terms: train (solid) vs val (dashed)", _img(plots.loss_grid(curves), "loss terms")),
        ("grad_shares", "Gradient shares", _grad_shares(runs)),
        ("statistics", "Statistics per scale", _img(plots.stats_grid(curves), "statistics")),
        ("schedule", "Learning rate and warm-up", _img(plots.schedule_plot(curves), "learning rate")),
        ("histograms", "Validation histograms (last epoch)",
         _img(plots.histogram_grid([(r.label, r.histograms) for r in runs]), "histograms")),
        ("map", "Validation mAP", _img(plots.map_plot(curves), "mAP")),
        ("configs", "Configs", configs),
    ]
    path = Path(path)
    path.write_text(_page(f"yololab compare: {', '.join(r.label for r in runs)}", sections), encoding="utf-8")
    return path
