"""``yololab doctor RUN --try``: the doctor's suggested ``--set`` changes as a small study against the run's own
configuration, so that each prescription is checked over seeds instead of believed.

One factor, ``suggestion``: its baseline level ``as-run`` is the run's config.yaml unchanged, each other level
one finding's changes. Changes that cannot be applied as they stand (``model.cfg=NEW.cfg``: a file to write
first) are left out, and said so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from yololab import keys as scale_keys
from yololab.config import ConfigError, build_config, load_config
from yololab.study.spec import Study, check_key, load_study

FACTOR = "suggestion"
AS_RUN = "as-run"
MIN_SEEDS = 2  # one seed cannot tell an effect from seed noise
STUDY_NAME_SUFFIX = "-try"
SUGGESTIONS_FILE = "suggestions.yaml"  # the generated study file, in the study folder


@dataclass
class Suggestions:
    study: Study | None  # None when no finding suggests a change that can be tried
    skipped: list[str]  # "rule: change (why)" of each change left out


def suggestion_levels(findings: list, config: dict) -> tuple[list[dict], list[str]]:
    """Study levels (name, set) of the findings' changes that apply to ``config`` (a run's config dict), and
    the ones left out with the reason; identical change sets are tried once."""
    levels, skipped, seen = [], [], []
    for finding in findings:
        changes = dict(finding.changes)
        if not changes or changes in seen:
            continue
        label = f"{finding.rule}: {', '.join(f'{k}={v}' for k, v in changes.items())}"
        problem = next((p for key in changes if (p := check_key(key))), None) or _unusable(changes, config)
        if problem:
            skipped.append(f"{label} ({problem})")
            continue
        seen.append(changes)
        name = finding.rule if finding.scale is None else scale_keys.key(finding.rule, finding.scale)
        levels.append({"name": name, "set": changes})
    return levels, skipped


def _unusable(changes: dict, config: dict) -> str | None:
    """Why ``changes`` cannot make a config from ``config`` (a file that does not exist, a bad value)."""
    cfg_value = changes.get("model.cfg")
    if cfg_value is not None and not Path(str(cfg_value)).is_file():
        return f"{cfg_value} is a file to write first"
    try:
        build_config(config, [f"{k}={json.dumps(v)}" for k, v in changes.items()])  # JSON is YAML: null, lists
    except (ConfigError, ValueError) as err:
        return str(err).splitlines()[-1].strip()
    return None


def suggestion_study(run: Path, findings: list, study_dir: Path, epochs: int | None, seeds: int) -> Suggestions:
    """Write ``study_dir/suggestions.yaml`` (the run's config as baseline, one level per usable suggestion)
    and load it as a Study; nothing is written and ``study`` is None when no suggestion can be tried."""
    config_path = (run / "config.yaml").resolve()
    config = load_config(config_path)
    levels, skipped = suggestion_levels(findings, config.model_dump(mode="json"))
    if not levels:
        return Suggestions(None, skipped)
    study = {
        "description": f"the doctor's suggestions for {run}, against the run's own configuration",
        "data": str(Path(config.data.data).resolve()),
        "base": {"config": str(config_path)},
        "budget": {"epochs": epochs or config.train.epochs},
        "seeds": max(MIN_SEEDS, seeds),
        "factors": {FACTOR: [{"name": AS_RUN, "set": {}}, *levels]},
    }
    study_dir.mkdir(parents=True, exist_ok=True)
    path = study_dir / SUGGESTIONS_FILE
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return Suggestions(load_study(path), skipped)
