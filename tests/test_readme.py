"""README.md's training-loop example runs as written."""

import math
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_training_loop_runs(capsys):
    blocks = python_blocks()
    assert blocks, "README.md has no python code block"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    out = namespace["out"]
    assert math.isfinite(out.loss.item())
    assert math.isfinite(out.local_mi.item())
    assert "local MI" in capsys.readouterr().out


def test_readme_multi_view_loop_runs(capsys):
    blocks = python_blocks()
    assert len(blocks) >= 2, "README.md has no multi-view block"
    namespace: dict = {}
    exec(compile(blocks[1], str(README), "exec"), namespace)
    assert namespace["step"] == 4 and math.isfinite(namespace["loss"].item())
    assert "cross-view local MI" in capsys.readouterr().out


def test_readme_simclr_plus_dim_loop_runs(capsys):
    blocks = python_blocks()
    assert len(blocks) >= 3, "README.md has no SimCLR + DIM block"
    namespace: dict = {}
    exec(compile(blocks[2], str(README), "exec"), namespace)
    assert namespace["step"] == 4 and math.isfinite(namespace["loss"].item())
    # The DIM head was in the loss: its critics received gradients.
    assert all(p.grad is not None for p in namespace["head"].local_critic.parameters())
    assert "SimCLR + DIM loss" in capsys.readouterr().out
