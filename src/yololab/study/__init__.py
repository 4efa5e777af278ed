"""Studies: which configuration works on my data, answered over seeds with confidence intervals.

A study file (``spec``) names the data, the base config, the budget, the seeds and the factors (a grid) or a
search space; ``execute`` runs it on Ray Tune into ordinary run folders; ``results``, ``analysis`` and
``page`` turn the run folders into ``results.csv`` and ``study.html``.
"""

from __future__ import annotations

from pathlib import Path

from yololab.study.spec import Study, StudyError, load_study

__all__ = ["Study", "StudyError", "load_study", "report_study", "write_results"]


def write_results(study: Study, study_dir: Path) -> tuple[Path, Path]:
    """``results.csv`` and ``study.html`` of the study folder, from its run folders; returns both paths."""
    from yololab.study.page import write_page
    from yololab.study.results import RESULTS_FILE, collect, write_csv

    rows = collect(study, study_dir)
    return write_csv(study, rows, Path(study_dir) / RESULTS_FILE), write_page(study, rows, Path(study_dir))


def report_study(study_dir: str | Path) -> tuple[Path, Path]:
    """Rebuild ``results.csv`` and ``study.html`` of a study folder from its study.yaml and run folders."""
    from yololab.study.execute import STUDY_FILE

    study_dir = Path(study_dir)
    path = study_dir / STUDY_FILE
    if not path.is_file():
        raise StudyError(path, None, "missing: a study folder has study.yaml (written by yololab study run)")
    return write_results(load_study(path), study_dir)
