"""The Python examples in the READMEs run as written."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
READMES = ["README.md", "reference/README.md"]


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", (ROOT / path).read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("path", READMES)
def test_readme_python_examples_run(path):
    blocks = python_blocks(path)
    assert blocks, f"{path} has no python example"
    for block in blocks:
        exec(compile(block, f"{path} example", "exec"), {"__name__": "readme_example"})
