"""docs/loss.md cannot drift from the presets and the golden checks: every preset has its table, every option a
preset sets appears there with its value, and every golden comparison is listed."""

from __future__ import annotations

import json
import re
from pathlib import Path

from golden import CHECKS, cases
from yololab.loss import PRESETS, LossConfig, preset

DOC = Path(__file__).resolve().parents[1] / "docs" / "loss.md"
TABLES = "## Each preset, option by option"
GOLDEN = "## What the golden tests check"
HEADER = "| behaviour | option | where the original does it | bug of the original? |"


def _section(text: str, title: str) -> str:
    """The text from the heading ``title`` to the next heading of the same level."""
    level = title.split(" ")[0]
    start = text.index(title + "\n")
    rest = text[start + len(title):]
    end = re.search(rf"^{level} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def preset_tables() -> dict[str, str]:
    """preset name -> the option column of its table, one line per row."""
    part = _section(DOC.read_text(), TABLES)
    out = {}
    for block in re.split(r"^### ", part, flags=re.MULTILINE)[1:]:
        name = re.match(r"`([^`]+)`", block)[1]
        rows = [line for line in block.splitlines() if line.startswith("| ")]
        assert rows[0] == HEADER, name
        out[name] = "\n".join(row.split(" | ")[1] for row in rows[2:])
    return out


def test_every_preset_has_a_table():
    assert list(preset_tables()) == list(PRESETS)


def test_every_option_a_preset_sets_is_in_its_table_with_its_value():
    defaults = LossConfig().model_dump(mode="json")
    tables = preset_tables()
    for name, fields in PRESETS.items():
        values = preset(name).model_dump(mode="json")
        away = {f for f in LossConfig.model_fields if values[f] != defaults[f]}
        assert away <= set(fields)  # a preset changes only what it lists
        missing = [f"{f}={json.dumps(values[f])}" for f in fields
                   if f"`{f}={json.dumps(values[f])}`" not in tables[name]]
        assert missing == [], f"docs/loss.md, table of {name}: no row sets {missing}"


def test_overview_lists_every_preset():
    overview = _section(DOC.read_text(), "## Presets")
    listed = [m[1] for m in re.finditer(r"^\| `([^`]+)` \|", overview, re.MULTILINE)]
    assert listed == list(PRESETS)


def test_every_golden_comparison_is_listed():
    golden = _section(DOC.read_text(), GOLDEN)
    rows = [line for line in golden.splitlines() if line.startswith("| `")]
    for name, file, variant in CHECKS:
        assert any(f"`{name}`" in r and f"`{file}.npz`" in r and f"`{variant}`" in r for r in rows), (name, variant)
    n_cases = {len(cases(file)) for _, file, _ in CHECKS}
    assert n_cases == {10}
    assert f"{len(CHECKS)} comparisons × 10 cases = {len(CHECKS) * 10} test cases" in golden
