"""The README's example of YoloLoss in a plain PyTorch loop runs and drives the loss down."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_loss_example_runs(capsys):
    block = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)
    assert "print" in block and capsys.readouterr().out.count("noobj/s") >= 1
    stats = namespace["breakdown"].stats
    assert stats["n_pos/s0"].item() + stats["n_pos/s1"].item() + stats["n_pos/s2"].item() >= 1
