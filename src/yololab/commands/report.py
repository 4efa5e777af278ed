"""``yololab report`` (one run as an HTML page) and ``yololab compare`` (several runs overlaid)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from yololab.commands.messages import fail

console = Console()



def report_command(
    run: Annotated[Path, typer.Argument(help="Run folder (holds config.yaml and metrics.jsonl).")],
    out: Annotated[Path | None, typer.Option(help="Where to write the HTML (default RUN/report.html).")]
    = None,
) -> None:
    """Write one self-contained HTML report of a run: findings, loss and statistics curves, mAP, anchors.

    Example: yololab report runs/train --out report.html
    """
    from yololab.diagnostics.report import ReportError, write_report

    start = time.perf_counter()
    try:
        path = write_report(run, out)
    except ReportError as err:
        _fail(str(err))
    console.print(f"wrote {escape(str(path))} ({time.perf_counter() - start:.1f} s)")


def compare_command(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run folders.")],
    out: Annotated[Path, typer.Option(help="Where to write the HTML.")] = Path("compare.html"),
) -> None:
    """Overlay the curves of several runs in one HTML page, with a table of their final metrics.

    Example: yololab compare runs/presets/yololab runs/presets/darknet --out compare.html
    """
    from yololab.diagnostics.report import (
        NOT_COMPARABLE,
        ReportError,
        compare_runs,
        final_metrics,
        load_runs,
        losses_comparable,
    )

    try:
        path = compare_runs(runs, out)
        loaded = load_runs(runs)
        rows = [final_metrics(r) for r in loaded]
    except ReportError as err:
        _fail(str(err))
    table = Table(title="final metrics (last val row)")
    header = list(dict.fromkeys(k for row in rows for k in row))
    for key in header:
        table.add_column(escape(key), justify="left" if key == "run" else "right")
    for row in rows:
        table.add_row(*(escape(_cell(row.get(k))) for k in header))
    console.print(table)
    if not losses_comparable(loaded):
        console.print(f"note: {escape(NOT_COMPARABLE)}")
    console.print(f"wrote {escape(str(path))}")


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _fail(message: str) -> None:
    fail(console, message)
