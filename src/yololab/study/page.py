"""``study.html``: one self-contained page in the run report's style (its CSS, tables and embedded plots).

Sections: summary, verdicts (one sentence per factor level), configurations (mean ± sd and 95 % bootstrap CI of
mAP over seeds), paired differences against the baseline, val mAP and per-term loss curves (mean line, band
over seeds), train/val gap per term and scale, the doctor's findings by configuration, every run, the study.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from yololab import keys as scale_keys
from yololab.diagnostics.report import DIGITS, SEVERITY_COLOURS, _img, _page, _table
from yololab.engine.metrics_log import read_metrics
from yololab.study import curves
from yololab.study.analysis import METRIC_LABELS, METRICS, Comparison, ConfigStats, comparisons, config_stats
from yololab.study.results import RunRow, factor_keys, finding_id, missing_runs
from yololab.study.spec import Study
from yololab.study.stats import Summary, signed
from yololab.study.trial import FINISHED

PAGE_NAME = "study.html"
GAP_SPLITS = ("train", "val")
NEUTRAL = "#ffffff"


def _mean_sd(s: Summary) -> str:
    if s.n == 0:
        return "–"
    return f"{s.mean:.{DIGITS}f}" if s.n < 2 else f"{s.mean:.{DIGITS}f} ± {s.sd:.{DIGITS}f}"


def _ci(s: Summary, sign: bool = False) -> str:
    if s.n < 2 or not math.isfinite(s.low):
        return "–"
    show = (lambda v: signed(v, DIGITS)) if sign else (lambda v: f"{v:.{DIGITS}f}")
    return f"{show(s.low)} … {show(s.high)}"


def _minutes(value: float) -> str | None:
    """Minutes to one decimal (a time, not significant digits); None (an empty cell) when unknown."""
    return f"{value:.1f}" if math.isfinite(value) else None


def _summary(study: Study, rows: list[RunRow], study_dir: Path) -> str:
    spec = study.spec
    finished = [r for r in rows if r.status == FINISHED]
    minutes = sum(r.minutes for r in finished if math.isfinite(r.minutes))
    missing = missing_runs(study, rows)
    items = [
        ("study file", str(study.path)), ("folder", str(study_dir)), ("description", spec.description or "–"),
        ("data", spec.data if isinstance(spec.data, str) else f"generated: {spec.data.make} {spec.data.options}"),
        ("base", f"cfg {spec.base.cfg or '(default)'}, preset {spec.base.preset or '(default)'}, "
                 f"set {spec.base.set or {}}" + (f", config {spec.base.config}" if spec.base.config else "")),
        ("budget", spec.budget.describe()),
        ("seeds", ", ".join(map(str, study.seeds))),
        ("design", "search (Optuna TPE)" if spec.search else spec.design),
        ("baseline", study.baseline.name if study.baseline else "– (a search has none)"),
        ("runs finished / stopped early / missing",
         f"{len(finished)} / {len(rows) - len(finished)} / {len(missing)}"),
        ("training minutes (sum over finished runs)", f"{minutes:.1f}"),
    ]
    out = _table(["", "value"], [list(item) for item in items])
    if missing:
        out += f'<p class="none">not finished: {html.escape(", ".join(missing))}</p>'
    return out


def _verdicts(found: list[Comparison]) -> str:
    if not found:
        return '<p class="none">no comparison against a baseline (a search, or a single configuration)</p>'
    items = "".join(f"<li>{html.escape(c.sentence)}</li>" for c in found)
    return (f"<ul>{items}</ul><p>Paired over the seeds both configurations finished; the interval is a 95 % "
            "percentile bootstrap of the mean difference (10,000 resamples). With 2-3 seeds it cannot be wider "
            "than the spread of the differences seen.</p>")


def _configurations(study: Study, stats: list[ConfigStats], rows: list[RunRow]) -> str:
    keys = factor_keys(study, rows)
    header = ["configuration", *keys, "seeds"]
    for metric in METRICS:
        header += [f"{METRIC_LABELS[metric]} mean ± sd", "95 % CI"]
    header.append("min per run")
    body = []
    for s in stats:
        line = [s.name, *(s.levels.get(k, "") for k in keys),
                f"{s.finished}" + (f" (+{s.stopped} stopped)" if s.stopped else "")]
        for metric in METRICS:
            line += [_mean_sd(s.summaries[metric]), _ci(s.summaries[metric])]
        line.append(_minutes(s.minutes))
        body.append(line)
    styles = [("#e8f3e8" if study.baseline and s.name == study.baseline.name else NEUTRAL) for s in stats]
    return _table(header, body, styles) + "<p>The baseline is shaded green. Test columns are empty when the " \
        "data has no test split.</p>"


def _differences(found: list[Comparison]) -> str:
    if not found:
        return '<p class="none">no baseline to compare with</p>'
    header = ["factor", "level", "vs baseline level", "paired seeds"]
    for metric in METRICS:
        header += [f"Δ {METRIC_LABELS[metric]}", "95 % CI"]
    body = []
    for c in found:
        line = [c.factor, c.level, c.baseline_level, c.diffs["val_mAP50"].n]
        for metric in METRICS:
            d = c.diffs[metric]
            line += [signed(d.mean, DIGITS) if d.n else "–", _ci(d, sign=True)]
        body.append(line)
    return _table(header, body)


def _groups(stats: list[ConfigStats], rows: list[RunRow]) -> curves.Groups:
    groups = []
    for s in stats:
        seeds = [read_metrics(r.folder / "metrics.jsonl") for r in rows
                 if r.config == s.name and r.status == FINISHED and (r.folder / "metrics.jsonl").is_file()]
        if seeds:
            groups.append((s.name, seeds))
    return groups


def _gaps(groups: curves.Groups) -> str:
    """Last-epoch val minus train loss per term and scale, mean over seeds: what overfits where."""
    from yololab.diagnostics.plots import _union

    scales, terms = _union([(label, rows) for label, seeds in groups for rows in seeds])
    if not terms:
        return '<p class="none">no loss terms logged</p>'
    body = []
    for label, seeds in groups:
        for scale in scales:
            line: list = [label, f"s{scale}"]
            for term in terms:
                gaps = []
                for rows in seeds:
                    last = {split: _last(rows, split, scale_keys.loss_key(term, scale)) for split in GAP_SPLITS}
                    if None not in last.values():
                        gaps.append(last["val"] - last["train"])
                line.append(sum(gaps) / len(gaps) if gaps else None)
            body.append(line)
    return (_table(["configuration", "scale", *terms], body) +
            "<p>Val minus train of each weighted term at the last epoch, mean over seeds: a positive gap is a "
            "term the model fits on its training images better than on new ones.</p>")


def _last(rows: list[dict], split: str, key: str) -> float | None:
    values = [row[key] for row in rows if row.get("split") == split and row.get(key) is not None]
    return float(values[-1]) if values else None


def _findings(stats: list[ConfigStats], rows: list[RunRow]) -> str:
    parts = []
    for s in stats:
        mine = [r for r in rows if r.config == s.name]
        by_id: dict[str, dict] = {}
        for r in mine:
            for f in r.findings:
                entry = by_id.setdefault(finding_id(f), {"finding": f, "seeds": []})
                entry["seeds"].append(r.seed)
        if not by_id:
            inner = "<p>the doctor found nothing to report in any seed</p>" if mine else \
                '<p class="none">no finished runs</p>'
        else:
            body = [[fid, e["finding"].get("severity"), f"{len(e['seeds'])} of {len(mine)}: "
                     f"{', '.join(map(str, e['seeds']))}", e["finding"].get("message"),
                     e["finding"].get("suggestion"), e["finding"].get("changes") or None]
                    for fid, e in by_id.items()]
            styles = [SEVERITY_COLOURS.get(str(e["finding"].get("severity")), NEUTRAL) for e in by_id.values()]
            inner = _table(["finding", "severity", "seeds", "message (first seed)", "suggestion", "changes"],
                           body, styles)
        parts.append(f"<h3>{html.escape(s.name)}</h3>{inner}")
    return "".join(parts)


def _runs(study: Study, rows: list[RunRow], study_dir: Path) -> str:
    keys = factor_keys(study, rows)
    body = [[r.config, *(r.levels.get(k, "") for k in keys), r.seed, r.status, r.epochs, r.val_mAP50,
             r.val_mAP50_95, r.test_mAP50, _minutes(r.minutes),
             " ".join(r.finding_ids) or "–", str(r.folder.relative_to(study_dir))] for r in rows]
    header = ["configuration", *keys, "seed", "status", "epochs", "val mAP50", "val mAP50_95", "test mAP50",
              "minutes", "findings", "folder (report.html inside)"]
    return _table(header, body)


def write_page(study: Study, rows: list[RunRow], study_dir: Path) -> Path:
    """Write ``study_dir/study.html`` from the rows; returns its path."""
    stats = config_stats(study, rows)
    found = comparisons(study, rows)
    groups = _groups(stats, rows)
    x = "step" if study.spec.budget.steps is not None else "epoch"  # runs of a steps budget differ in epochs
    study_text = (study_dir / "study.yaml").read_text() if (study_dir / "study.yaml").is_file() else ""
    sections = [
        ("summary", "Summary", _summary(study, rows, study_dir)),
        ("verdicts", "Verdicts (val mAP@0.5, paired with the baseline)", _verdicts(found)),
        ("configurations", "Configurations: mean ± sd over seeds and 95 % bootstrap CI of the mean",
         _configurations(study, stats, rows)),
        ("differences", "Paired differences against the baseline (same seeds)", _differences(found)),
        ("map", "Validation mAP: mean over seeds, band from min to max",
         _img(curves.map_band_plot(groups, x), "mAP")),
        ("losses", "Loss terms: train (solid) vs val (dashed), mean over seeds, band from min to max",
         _img(curves.loss_band_grid(groups, x), "loss terms")),
        ("gaps", "Train/val gap per term and scale", _gaps(groups)),
        ("findings", "The doctor's findings by configuration", _findings(stats, rows)),
        ("runs", "Runs", _runs(study, rows, study_dir)),
        ("study", "Study", f"<details><summary>study.yaml</summary><pre>{html.escape(study_text)}</pre></details>"),
    ]
    path = study_dir / PAGE_NAME
    # The report's page takes section builders; a study's sections are built above, once.
    builders = [(sid, heading, lambda _source, body=body: body) for sid, heading, body in sections]
    path.write_text(_page(f"yololab study: {study_dir.name}", builders, None), encoding="utf-8")
    return path
