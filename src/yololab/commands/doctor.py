"""``yololab doctor RUN``: what is wrong with a training run and which config change to try."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from yololab.commands.messages import EXIT_ERROR, print_error
from yololab.config import ConfigError, parse_overrides
from yololab.diagnostics.doctor import FINDINGS_FILE, DoctorInputError, Finding, diagnose_run

console = Console()

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def doctor_command(
    run: Annotated[Path, typer.Argument(help="Run folder holding metrics.jsonl (and anchor_fit.json, "
                                             "config.yaml when present).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the findings as JSON instead of a table.")]
    = False,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Threshold override: field=value "
                                                       "(fields of the run config's doctor section).")] = None,
    try_: Annotated[bool, typer.Option("--try", help="Train the suggested changes against the run's config "
                                                     "(a small study on Ray) and say which helped.")] = False,
    epochs: Annotated[int | None, typer.Option(help="With --try: epochs per run (default: the run's).")] = None,
    seeds: Annotated[int, typer.Option(help="With --try: seeds per suggestion (at least 2).")] = 2,
) -> None:
    """Read a run's metrics and anchor fit, print the findings and write them to RUN/findings.json.

    Exits 0 even when there are findings (it is a report); 2 when the run cannot be read.

    The thresholds are the run's config.yaml ``doctor`` section, with ``--set`` on top.

    Example: yololab doctor runs/train --set unfound_iou=0.05   (or: yololab doctor runs/demo --try --epochs 3)
    """
    try:
        findings = diagnose_run(run, overrides=parse_overrides(overrides or []))
    except (DoctorInputError, ConfigError, OSError) as err:
        print_error(console, str(err))
        raise typer.Exit(EXIT_ERROR) from None
    if json_out:
        print(json.dumps(json.loads((run / FINDINGS_FILE).read_text()), indent=2))
        return
    _print_table(findings, run)
    if try_:
        from yololab.commands.study import try_suggestions

        try_suggestions(run, findings, epochs, seeds)


def _where(finding: Finding) -> str:
    return "/".join(str(x) for x in (f"s{finding.scale}" if finding.scale is not None else None, finding.term) if x)


def _change(finding: Finding) -> str:
    """The suggested config change as the flags that make it: ``--set loss.obj_weight=1250 ...``."""
    return " ".join(f"--set {key}={value}" for key, value in finding.changes.items())


def _print_table(findings: list[Finding], run: Path) -> None:
    if not findings:
        console.print(f"no findings for {escape(str(run))}", highlight=False, soft_wrap=True)
    elif console.is_terminal:
        table = Table(title=f"doctor: {escape(str(run))}")
        for column in ("severity", "scale/term", "first epoch", "finding", "suggested change"):
            # Long words (a file name, loss.obj_weight=1250) fold onto the next line instead of being cut.
            table.add_column(column, overflow="fold")
        for f in findings:
            table.add_row(f"[{SEVERITY_STYLE[f.severity]}]{f.severity}[/]", _where(f) or "-",
                          "-" if f.first_epoch is None else str(f.first_epoch), escape(f.message),
                          escape(f"{f.suggestion} {_change(f)}".strip()))
        console.print(table)
    else:  # a pipe or a log: plain, complete lines
        lines = [f"doctor: {run}"]
        for f in findings:
            since = "" if f.first_epoch is None else f" from epoch {f.first_epoch}"
            lines.append(f"{f.severity} {f.rule}{' ' + _where(f) if _where(f) else ''}{since}: {f.message}")
            lines.append(f"    try: {f.suggestion}")
            if f.changes:
                lines.append(f"    change: {_change(f)}")
        for line in lines:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {escape(str(run / FINDINGS_FILE))}", highlight=False, soft_wrap=True)
