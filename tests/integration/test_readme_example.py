"""The README's Python example, run as it stands on the real packaged default model: the
package's entry points are what a notebook user reads there, so they must work."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Python\n", 1)
    assert len(section) == 2, "the README has no '## Python' section"
    blocks = re.findall(r"```python\n(.*?)```", section[1].split("\n## ", 1)[0], re.S)
    assert len(blocks) == 1, "the README's Python section should hold one example"
    return blocks[0]


@pytest.mark.integration
def test_the_readme_python_example_runs_and_restores_the_model(capsys):
    import tomsparse as ts

    namespace: dict = {}
    exec(compile(readme_example(), str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    saved, masks, ppl = namespace["saved"], namespace["masks"], namespace["ppl"]
    assert saved.masked == sum(len(idx) for idx in masks.values()) > 0
    assert f"{saved.masked:,} weights masked" in printed
    assert math.isfinite(ppl.perplexity) and ppl.windows == 4
    before, after = namespace["before"].table, namespace["after"].table
    assert len(before) == len(after) > 0
    assert not before["margin"].equals(after["margin"])      # the mask did something
    # the with-block undid the perturbation: every weight equals a freshly loaded model's
    fresh = ts.load_model().model.state_dict()
    for name, tensor in namespace["lm"].model.state_dict().items():
        assert torch.equal(tensor, fresh[name]), name
    assert set(ts.ENTRY_POINTS) <= set(dir(ts))
