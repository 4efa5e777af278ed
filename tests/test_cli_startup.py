"""Start-up cost of the command line: importing it must not load the heavy libraries (torch, Lightning,
matplotlib, albumentations), which are imported by the commands that use them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "lightning", "matplotlib", "albumentations", "cv2", "ray", "onnx")


def loaded_after(statement: str) -> list[str]:
    """Heavy top-level packages in sys.modules after running ``statement`` in a fresh interpreter."""
    probe = f"import json, sys\n{statement}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return [name for name in json.loads(result.stdout.splitlines()[-1]) if name in HEAVY]


@pytest.mark.parametrize("statement", [
    "import yololab.cli",
    "import yololab.config",
    "from yololab.config import build_config; build_config({}, ['train.epochs=2'])",
    "from yololab.data import DataError, load_data_yaml",
])
def test_light_imports_load_no_heavy_library(statement):
    assert loaded_after(statement) == []


def test_help_loads_no_heavy_library():
    # --help of every command builds the whole typer app; main() must not import torch to name its errors.
    statement = ("from typer.testing import CliRunner\nfrom yololab.cli import app\n"
                 "for args in (['--help'], ['train', '--help'], ['data', 'check', '--help'], ['anchors', '--help']):\n"
                 "    assert CliRunner().invoke(app, args).exit_code == 0, args")
    assert loaded_after(statement) == []


def test_the_probe_sees_a_heavy_import():
    # The check above could pass by never seeing anything: the same probe after importing the trainer.
    assert "torch" in loaded_after("import yololab.loss.criterion")


def test_lazy_exports_keep_the_public_names():
    # A submodule imported first must not hide the function of the same name the package exports.
    statement = ("import yololab.evaluate.nms, yololab.data.letterbox, types\n"
                 "from yololab.evaluate import nms\nfrom yololab.data import letterbox, DataError, YoloDataset\n"
                 "from yololab.loss import YoloLoss, preset, terms\n"
                 "assert callable(nms) and not isinstance(nms, types.ModuleType)\n"
                 "assert callable(letterbox) and not isinstance(letterbox, types.ModuleType)\n"
                 "assert isinstance(terms, types.ModuleType) and YoloLoss.__name__ == 'YoloLoss'")
    assert "torch" in loaded_after(statement)
