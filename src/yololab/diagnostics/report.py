"""The HTML report of a run (``write_report``) and of several runs side by side (``compare_runs``).

One self-contained file: inline CSS, plots embedded as base64 PNG data URIs, no script, no external
resource. A run folder holds ``config.yaml``, ``metrics.jsonl``, and optionally ``anchor_fit.json``,
``findings.json`` (the doctor's list of findings), ``histograms.jsonl`` (validation histograms) and ``lr.jsonl``
(the learning rate of every step); a missing optional file leaves its section with a note.

A page is a list of sections, each built by one function from the run (``REPORT_SECTIONS``) or the runs
(``COMPARE_SECTIONS``); a new section is one more function and one more entry there. Each plot carries its
legend as HTML above the image (a swatch per colour or line style, and what it stands for).
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from yololab import keys as scale_keys
from yololab.config import LOSS_OVERRIDES, dotted
from yololab.diagnostics import plots
from yololab.diagnostics.runfiles import (
    ROW_KEYS,
    best_epoch,
    read_histograms,
    read_jsonl,
    read_lr_steps,
)
from yololab.diagnostics.threshold_plots import thresholds_section
from yololab.errors import FileProblem
from yololab.loss.presets import preset

REPORT_NAME = "report.html"
TEST_METRICS = "test_metrics.json"
TEST_KEYS = ("mAP50", "mAP50_95", "n_images")  # what the summary shows of test_metrics.json
DIGITS = 4  # decimals shown for losses, IoUs, mAPs
SMALL = 10.0 ** -(DIGITS - 1)  # below this, significant digits instead of decimals
# Severity -> background colour of its findings-table row; unknown severities get NEUTRAL.
SEVERITY_COLOURS = {"error": "#f8d0d0", "critical": "#f8d0d0", "warning": "#fbe6c2", "warn": "#fbe6c2",
                    "info": "#d6e6f8"}
NEUTRAL = "#eeeeee"
SEVERITY_ORDER = ("error", "critical", "warning", "warn", "info")  # how the per-run finding counts are listed
# Config keys that name a run rather than set it: never listed as a difference between runs.
NAMING_KEYS = ("name", "project", "preset")
MAX_SETTINGS = 8  # differing settings listed per run in the compare table; the rest are counted
# Legend swatch: SVG size in px and the dash pattern of each matplotlib line style.
SWATCH = (36, 14)
DASHES = {"-": "", "--": "7,4", ":": "2,3", "-.": "7,3,2,3"}
NOT_COMPARABLE = ("The runs' loss settings differ (preset, weights, reduction or aggregation): their loss values are "
                  "sums of different terms on different scales, so val loss/total is not comparable between them.")
NORMALISED = ("Each curve is divided by its run's first train value (1 at the start), so that runs whose loss "
              "settings differ are compared by the shape of their curves, not their size.")
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
img { max-width: 100%; display: block; margin: 0.2em 0 0.5em 0; }
figure { margin: 0.5em 0; }
.legend { display: flex; flex-wrap: wrap; gap: 0.3em 1.2em; font-size: 0.9em; margin: 0.3em 0; }
.key { display: inline-flex; align-items: center; gap: 0.35em; white-space: nowrap; }
.note { background: #fff6d6; border-left: 4px solid #e0b000; padding: 0.4em 0.7em; }
details.findings { margin: 0.3em 0; } details.findings > summary { cursor: pointer; padding: 0.2em 0; }
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
    lr_steps: list[dict] = field(default_factory=list)  # lr.jsonl rows; [] for runs from before it existed
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
               histograms=histograms, test=_read_json(run_dir / TEST_METRICS, dict),
               lr_steps=read_lr_steps(run_dir, ReportError))


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
    """The plot as an embedded PNG under its legend (HTML); a note when there was nothing to plot."""
    if fig is None:
        return f'<p class="none">no {html.escape(alt)} logged</p>'
    keys = plots.detach_legend(fig)
    return f'<figure>{_legend(keys)}<img alt="{html.escape(alt)}" src="{plots.data_uri(fig)}"></figure>'


def _legend(keys: list[plots.Key]) -> str:
    entries = "".join(f'<span class="key{" style" if k.style_only else ""}" data-colour="{k.colour}">{_swatch(k)}'
                      f"{html.escape(k.label)}</span>" for k in keys)
    return f'<div class="legend">{entries}</div>'


def _swatch(key: plots.Key) -> str:
    """A short line in the key's colour and dash pattern, with its marker in the middle, as inline SVG."""
    width, height = SWATCH
    mid = height / 2
    parts = []
    if key.linestyle in DASHES:
        dash = f' stroke-dasharray="{DASHES[key.linestyle]}"' if DASHES[key.linestyle] else ""
        parts.append(f'<line x1="0" y1="{mid}" x2="{width}" y2="{mid}" stroke="{key.colour}" stroke-width="2.5"'
                     f"{dash}/>")
    if key.marker:
        parts.append(f'<circle cx="{width / 2}" cy="{mid}" r="{mid / 2.5}" fill="{key.colour}"/>')
    return (f'<svg class="swatch" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'aria-hidden="true">{"".join(parts)}</svg>')


Section = tuple[str, str, Callable]  # (id, heading, builder of the section's inner HTML)


def _page(title: str, sections: list[Section], source) -> str:
    """``sections`` in page order, each builder called with ``source`` (a Run, or the list of runs compared)."""
    body = "".join(f'<section id="{sid}"><h2>{html.escape(heading)}</h2>{build(source)}</section>'
                   for sid, heading, build in sections)
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


def severity_counts(findings: list[dict] | None) -> str:
    """"2 error, 1 warning" (most severe first), "none" for an empty list, "no findings.json" for None."""
    if findings is None:
        return "no findings.json"
    counts = Counter(str(f.get("severity", "unknown")).lower() for f in findings)
    order = [s for s in SEVERITY_ORDER if s in counts] + sorted(set(counts) - set(SEVERITY_ORDER))
    return ", ".join(f"{counts[s]} {s}" for s in order) or "none"


# What autoanchor did (anchor_fit.json's "autoanchor" record), in words.
AUTOANCHOR_DECISIONS = {
    "fits": "the configured anchors fit (best possible recall at or above model.autoanchor_bpr under the size-ratio "
            "rule and model.autoanchor_bpr_iou50 at shape IoU > 0.5): kept",
    "applied": "k-means anchors fitted better and replaced the configured ones (config.yaml: model.anchors)",
    "kmeans_not_better": "the configured anchors fit poorly, but k-means anchors did no better: kept",
    "pinned": "the configured anchors fit poorly; k-means anchors would fit better, but model.anchors pins them",
    "off": "the configured anchors fit poorly; k-means anchors would fit better, but model.autoanchor is false",
    "kmeans_failed": "the configured anchors fit poorly and k-means could not run: kept",
}
NESTED_FIT_RECORDS = ("autoanchor", "kmeans")  # shown in words and as a table, not as one cell each


def _autoanchor(record: dict | None) -> str:
    """Autoanchor's decision and the configured vs k-means fit, as a sentence and a table."""
    if not record:
        return ""
    decision = AUTOANCHOR_DECISIONS.get(record.get("reason"), str(record.get("reason")))
    rows = [[which, *(fit.get(k) for k in ("bpr_ratio", "bpr_iou50", "mean_best_iou")),
             " | ".join(" ".join(f"{w:g}x{h:g}" for w, h in scale) for scale in fit.get("anchors", []))]
            for which, fit in (("configured", record.get("configured")), ("k-means", record.get("fitted"))) if fit]
    return (f"<p>autoanchor: {html.escape(decision)}.</p>"
            + _table(["anchors", "best possible recall (ratio)", "share with IoU > 0.5", "mean best IoU",
                      "w x h per scale (px)"], rows))


def _anchor_fit(fit: dict | None) -> str:
    if fit is None:
        return '<p class="none">no anchor_fit.json in this run</p>'
    per_scale = {k: v for k, v in fit.items() if k.endswith("_per_scale") or k == "strides"}
    overall = [[k, v] for k, v in fit.items()
               if k not in per_scale and k not in ("anchors", "share_per_anchor", *NESTED_FIT_RECORDS)]
    out = _autoanchor(fit.get("autoanchor")) + _table(["measure", "value"], overall)
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


def _schedule_note(runs: list[Run]) -> str:
    """What each curve of the schedule plot is, with each run's settings of both warm-ups."""
    lines = []
    for run in runs:
        optim, loss = run.config.get("optim") or {}, run.config.get("loss") or {}
        who = f"{html.escape(run.label)}: " if len(runs) > 1 else ""
        lr_source = ("the lr of every step (lr.jsonl)" if run.lr_steps else
                     "no lr.jsonl in this run, so only each epoch's last-step lr (a warm-up inside an epoch does "
                     "not show)")
        batches = loss.get("warmup_batches") or 0
        loss_warmup = (f"the first {batches} batches" if batches else "none (loss.warmup_batches = 0)")
        warm, final = (html.escape(_setting(optim.get(k))) for k in ("warmup_epochs", "final_lr_fraction"))
        lines.append(f"<li>{who}learning-rate warm-up over optim.warmup_epochs = {warm} epochs, then cosine to "
                     f"final_lr_fraction = {final}; drawn from {lr_source}. Anchor-prior warm-up of the loss "
                     f"(keras-yolo3's warmup_batches: predictions without a truth are also pulled to their cell "
                     f"centre and anchor size): {loss_warmup}.</li>")
    return f"<ul>{''.join(lines)}</ul>"


def _setting(value) -> str:
    """A config value as written in config.yaml (1.0, 0.05), not in the tables' fixed decimals."""
    return f"{value:g}" if isinstance(value, float) else _fmt(value)


def _schedule(runs: list[Run]) -> str:
    fig = plots.schedule_plot([(r.label, r.rows) for r in runs], [r.lr_steps for r in runs],
                              [(r.config.get("optim") or {}).get("warmup_epochs") for r in runs])
    return _schedule_note(runs) + _img(fig, "learning rate")


def _curves(runs: list[Run]) -> list[tuple[str, list[dict]]]:
    return [(r.label, r.rows) for r in runs]


SIZE_NOTE = ("AP@0.5 (and AP@0.5:0.95) of the objects of each size alone, computed by pycocotools' COCOeval with "
             "its area ranges: COCO's small (box area w*h < 32²), medium and large (> 96²), and the dataset's own "
             "size bins when its data.yaml declares some (size_bins), all in pixels² of the network input after "
             "letterbox. A size without truths has no AP (–).")


def _sizes(run: Run) -> str:
    """AP by object size: the last val epoch (and the test split, when evaluated) as a table, then per epoch."""
    sizes, bins = plots.size_names(run.rows)
    if not sizes and not bins:
        return '<p class="none">no AP by object size logged (runs from before it was measured)</p>'
    last, test = final_row(run.rows, "val") or {}, run.test or {}
    entries = [(f"COCO {s}", [scale_keys.size_key(m, s) for m in scale_keys.MAP_METRICS],
                (test.get("by_size") or {}).get(s)) for s in sizes]
    entries += [(f"bin {b}", [scale_keys.bin_key(b, m) for m in scale_keys.MAP_METRICS],
                 (test.get("by_bin") or {}).get(b)) for b in bins]
    header = ["size", "val mAP50 (last epoch)", "val mAP50_95 (last epoch)"]
    with_test = bool(test.get("by_size"))
    if with_test:
        header += ["test mAP50", "test mAP50_95", "test truths", "area (input px²)"]
    body = [[label, *(last.get(k) for k in logged), *(_test_cells(tested or {}) if with_test else [])]
            for label, logged, tested in entries]
    return (f"<p>{html.escape(SIZE_NOTE)}</p>" + _table(header, body)
            + _img(plots.size_map_plot(run.rows), "AP by object size"))


def _test_cells(summary: dict) -> list:
    """mAP50, mAP50_95, truths and area range of one size in test_metrics.json; NaN (no truths) shown as '–'."""
    aps = [None if v is None or math.isnan(v) else v for v in (summary.get(m) for m in scale_keys.MAP_METRICS)]
    area = " - ".join(f"{v:g}" for v in summary["area"]) if "area" in summary else None
    return [*aps, summary.get("n_truths"), area]


REPORT_SECTIONS: list[Section] = [
    ("summary", "Summary", lambda run: _summary(run) + _config(run)),
    ("findings", "Findings", lambda run: _findings(run.findings)),
    ("losses", "Loss terms: train (solid) vs val (dashed)", lambda run: _img(plots.loss_grid(_curves([run])),
                                                                              "loss terms")),
    ("grad_shares", "Gradient shares", lambda run: _grad_shares([run])),
    ("statistics", "Statistics per scale", lambda run: _img(plots.stats_grid(_curves([run])), "statistics")),
    ("schedule", "Learning rate and the loss's anchor-prior warm-up", lambda run: _schedule([run])),
    ("histograms", "Validation histograms",
     lambda run: _img(plots.histogram_grid([(run.label, run.histograms)]), "histograms")),
    ("map", "Validation mAP", lambda run: _img(plots.map_plot(_curves([run])), "mAP")),
    ("sizes", "AP by object size", _sizes),
    ("thresholds", "Confidence thresholds", lambda run: thresholds_section(run.path)[2]),
    ("anchors", "Anchor fit", lambda run: _anchor_fit(run.anchor_fit)),
]


def write_report(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write the report of one run to ``path`` (default ``run_dir/report.html``); returns the path.

    Sections (``REPORT_SECTIONS``), in order: summary with the resolved config, findings, loss curves (rows =
    terms, columns = scales; train solid, val dashed), gradient shares per scale, statistics per scale, learning
    rate and the loss's anchor-prior warm-up, validation histograms, mAP, AP by object size, confidence thresholds,
    anchor fit. The gradient shares follow
    the loss curves because they tell which of those terms actually drives each head. Raises ReportError for a
    missing or bad run file.
    """
    run = load_run(run_dir)
    path = Path(path) if path is not None else run.path / REPORT_NAME
    path.write_text(_page(f"yololab report: {run.name}", REPORT_SECTIONS, run), encoding="utf-8")
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


def losses_comparable(runs: list[Run]) -> bool:
    """True when every run has the same loss settings, so that their loss values are on one scale."""
    return all((r.config.get("loss") or {}) == (runs[0].config.get("loss") or {}) for r in runs)


def _preset_loss(name) -> dict:
    """The loss settings a preset resolves to; {} for a name yololab does not know (an older or renamed preset)."""
    try:
        return preset(str(name)).model_dump()
    except ValueError:
        return {}


def differing_settings(runs: list[Run]) -> list[dict]:
    """Per run, the settings whose value is not the same in every run, as ``{"optim.lr": 0.002}``.

    Left out: names (name, project, preset: the preset has its own column) and loss settings that only follow from
    the run's preset (its value is the preset's); a loss setting changed on top of the preset stays."""
    # loss_overrides restate loss.* settings that differ from the preset: those are compared as loss.* keys.
    flats = [dotted({k: v for k, v in r.config.items() if k != LOSS_OVERRIDES}) for r in runs]
    keys = [k for k in dict.fromkeys(k for flat in flats for k in flat) if k not in NAMING_KEYS
            and len({json.dumps(flat.get(k), sort_keys=True, default=str) for flat in flats}) > 1]
    out = []
    for run, flat in zip(runs, flats, strict=True):
        from_preset = {f"loss.{k}": v for k, v in _preset_loss(run.config.get("preset")).items()}
        out.append({k: flat.get(k) for k in keys if not (k in from_preset and from_preset[k] == flat.get(k))})
    return out


def _settings_text(settings: dict) -> str:
    shown = [f"{k}={_setting(v)}" for k, v in list(settings.items())[:MAX_SETTINGS]]
    rest = len(settings) - MAX_SETTINGS
    return ", ".join(shown) + (f" … and {rest} more (see Configs)" if rest > 0 else "") if shown else "–"


def final_metrics(run: Run) -> dict:
    """The final-metrics row of ``compare_runs``: preset, last val mAPs, val loss/total and per-scale val iou."""
    last = final_row(run.rows, "val") or {}
    scales, _ = plots.scales_and_terms(run.rows)
    best = best_epoch(run.rows)
    epochs_run = len({row["epoch"] for row in run.rows if row.get("split") == "train"})
    return {"run": run.label, "preset": run.config.get("preset"), "epochs": epochs_run,
            "val mAP50": last.get("mAP50"), "val mAP50_95": last.get("mAP50_95"),
            "val loss/total": last.get("loss/total"),
            "best mAP50 (epoch)": f"{_fmt(best['mAP50'])} ({best['epoch']})" if best else None,
            **{f"val iou s{s}": last.get(scale_keys.stat_key("iou", s)) for s in scales}}


def _final(runs: list[Run]) -> str:
    """The runs table: preset, the settings that differ, final metrics; a note when loss totals do not compare."""
    rows = [final_metrics(r) | {"settings that differ": _settings_text(d)}
            for r, d in zip(runs, differing_settings(runs), strict=True)]
    comparable = losses_comparable(runs)
    if not comparable:
        for row in rows:
            row["val loss/total (not comparable)"] = row.pop("val loss/total")
    header = list(dict.fromkeys(k for row in rows for k in row))
    header.insert(2, header.pop(header.index("settings that differ")))
    note = "" if comparable else f'<p class="note">{html.escape(NOT_COMPARABLE)}</p>'
    return _table(header, [[row.get(k) for k in header] for row in rows]) + note


def _compare_findings(runs: list[Run]) -> str:
    """One closed <details> per run, its summary the run and its finding counts by severity."""
    return "".join(f'<details class="findings"><summary><b>{html.escape(r.label)}</b> '
                   f"({html.escape(_fmt(r.config.get('preset')))}): {html.escape(severity_counts(r.findings))}"
                   f"</summary>{_findings(r.findings)}</details>" for r in runs)


def _compare_losses(runs: list[Run]) -> str:
    comparable = losses_comparable(runs)
    note = "" if comparable else f'<p class="note">{html.escape(NOT_COMPARABLE + " " + NORMALISED)}</p>'
    return note + _img(plots.loss_grid(_curves(runs), normalise=not comparable), "loss terms")


COMPARE_SECTIONS: list[Section] = [
    ("final", "Runs and final metrics", _final),
    ("findings", "Findings per run", _compare_findings),
    ("losses", "Loss terms: train (solid) vs val (dashed)", _compare_losses),
    ("grad_shares", "Gradient shares", _grad_shares),
    ("statistics", "Statistics per scale (val)", lambda runs: _img(plots.stats_grid(_curves(runs)), "statistics")),
    ("schedule", "Learning rate and the loss's anchor-prior warm-up", _schedule),
    ("histograms", "Validation histograms (last epoch)",
     lambda runs: _img(plots.histogram_grid([(r.label, r.histograms) for r in runs]), "histograms")),
    ("map", "Validation mAP", lambda runs: _img(plots.map_plot(_curves(runs)), "mAP")),
    ("configs", "Configs", lambda runs: "".join(f"<h3>{html.escape(r.label)}</h3>{_config(r)}" for r in runs)),
]


def compare_runs(run_dirs: list[str | Path], path: str | Path) -> Path:
    """Write one HTML page overlaying the curves of several runs (one colour per run); returns the path.

    Sections (``COMPARE_SECTIONS``): the runs table (preset, settings that differ, last val row), each run's
    findings (collapsed, with counts by severity), loss curves (divided by their first train value when the loss
    settings differ), gradient shares (term = line style and marker), val statistics, lr and the loss's warm-up,
    validation histograms (last epoch), mAP, and each run's config. Raises ReportError for a bad run folder.
    """
    if not run_dirs:
        raise ReportError(Path(path), None, "no runs to compare")
    runs = load_runs(run_dirs)
    path = Path(path)
    path.write_text(_page(f"yololab compare: {', '.join(r.label for r in runs)}", COMPARE_SECTIONS, runs),
                    encoding="utf-8")
    return path
