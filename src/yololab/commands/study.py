"""``yololab study run STUDY.yaml`` (every configuration x seed on Ray Tune) and ``yololab study report DIR``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from yololab.commands.messages import fail

console = Console()

EXIT_FAILED_RUNS = 1  # some runs raised: the others are kept, the study can be run again
EXIT_INTERRUPTED = 130  # the shell's code for a program ended by Ctrl+C: some runs are left for the next call

study_app = typer.Typer(help="Compare configurations over seeds, with confidence intervals (Ray Tune).",
                        no_args_is_help=True)


@study_app.command("run")
def run_command(
    study_file: Annotated[Path, typer.Argument(help="Study YAML (see studies/ and docs/studies.md).")],
    project: Annotated[Path, typer.Option(help="Folder of studies.")] = Path("runs/studies"),
    name: Annotated[str | None, typer.Option(help="Study name: writes PROJECT/NAME/ (default: the file's "
                                                  "name).")] = None,
    data: Annotated[str | None, typer.Option(help="A data.yaml instead of the study's dataset.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per run instead of the study's budget.")] = None,
    seeds: Annotated[int | None, typer.Option(help="Number of seeds instead of the study's.")] = None,
    set_items: Annotated[list[str] | None, typer.Option(
        "--set", help="KEY=VALUE over the study's base (repeatable), e.g. data.imgsz=320 with --data.")] = None,
    address: Annotated[str | None, typer.Option(
        envvar="RAY_ADDRESS", help="Ray cluster address, HOST:PORT (default: $RAY_ADDRESS, else a new local Ray on "
        "this machine's cores, even where `ray start` ran).")] = None,
    quiet: Annotated[bool, typer.Option(help="No Ray Tune progress table.")] = False,
) -> None:
    """Run every (configuration, seed) of a study as an ordinary run folder under PROJECT/NAME/runs/, then
    write PROJECT/NAME/results.csv and study.html. Run it again to continue a stopped study: finished runs
    are not repeated.

    Example: yololab study run studies/smoke.yaml --project runs/studies --name smoke
    """
    from yololab.study import StudyError, load_study, write_results
    from yololab.study.execute import run_study

    start = time.perf_counter()
    try:
        study = load_study(study_file, data=data, epochs=epochs, seeds=seeds, base_set=set_items)
        outcome = run_study(study, project, name or study_file.stem, address=address, verbose=0 if quiet else 1)
        csv_path, page = write_results(study, outcome.study_dir)
    except StudyError as err:
        _fail(str(err))
    print_verdicts(study, outcome.study_dir)
    console.print(f"{outcome.trained} runs trained, {outcome.skipped} already finished, "
                  f"{len(outcome.failed)} failed in {(time.perf_counter() - start) / 60:.1f} min")
    _end(outcome, csv_path, page)


@study_app.command("report")
def report_command(
    study_dir: Annotated[Path, typer.Argument(help="Study folder (holds study.yaml and runs/).")],
) -> None:
    """Rebuild results.csv and study.html of a study folder from its run folders.

    Example: yololab study report runs/studies/smoke
    """
    from yololab.study import StudyError, report_study

    try:
        csv_path, page = report_study(study_dir)
    except StudyError as err:
        _fail(str(err))
    console.print(f"wrote {escape(str(csv_path))} and {escape(str(page))}")


def try_suggestions(run: Path, findings: list, epochs: int | None, seeds: int) -> None:
    """``yololab doctor RUN --try``: the findings' changes as a study in RUN's folder of runs, then one verdict
    per suggestion."""
    from yololab.study import StudyError, write_results
    from yololab.study.execute import run_study
    from yololab.study.suggestions import STUDY_NAME_SUFFIX, suggestion_study

    name = f"{run.resolve().name}{STUDY_NAME_SUFFIX}"
    study_dir = run.resolve().parent / name
    try:
        suggestions = suggestion_study(run, findings, study_dir, epochs, seeds)
        for line in suggestions.skipped:
            console.print(f"not tried: {escape(line)}", soft_wrap=True)
        if suggestions.study is None:
            console.print(f"nothing to try: no finding of {escape(str(run))} suggests a change that can be trained",
                          soft_wrap=True)
            return
        outcome = run_study(suggestions.study, study_dir.parent, name, verbose=0)
        csv_path, page = write_results(suggestions.study, outcome.study_dir)
    except StudyError as err:
        _fail(str(err))
    print_verdicts(suggestions.study, outcome.study_dir)
    _end(outcome, csv_path, page)


def _end(outcome, csv_path: Path, page: Path) -> None:
    """The runs that failed or did not finish, the files written, and the exit code that says so."""
    for line in outcome.failed:
        console.print(f"[bold red]failed:[/] {escape(line)}")
    if outcome.unfinished:
        console.print(f"[bold yellow]interrupted:[/] {outcome.unfinished} runs did not finish; the same command "
                      "continues them (finished runs are kept)")
    console.print(f"wrote {escape(str(csv_path))} and {escape(str(page))}")
    if outcome.unfinished:
        raise typer.Exit(EXIT_INTERRUPTED)
    if outcome.failed:
        raise typer.Exit(EXIT_FAILED_RUNS)


def print_verdicts(study, study_dir: Path) -> None:
    """The verdict sentences of the study folder's runs, one line each."""
    from yololab.study.analysis import comparisons
    from yololab.study.results import collect

    for comparison in comparisons(study, collect(study, study_dir)):
        console.print(escape(comparison.sentence), soft_wrap=True)


def _fail(message: str) -> None:
    fail(console, message)
