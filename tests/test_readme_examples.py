"""The examples in the READMEs run as written, and the worked numbers in them are the reference's own.

``python`` blocks are executed; ``pycon`` blocks are doctests (prompts, then the exact output), run in order
in one namespace per README, so a number shown on the page cannot drift from what the code computes.
"""

import doctest
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
READMES = ["README.md", "reference/README.md"]


def blocks(path, language):
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / path).read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("path", READMES)
def test_readme_python_examples_run(path):
    found = blocks(path, "python")
    assert found, f"{path} has no python example"
    for block in found:
        exec(compile(block, f"{path} example", "exec"), {"__name__": "readme_example"})


def test_reference_readme_worked_examples_are_the_references_numbers():
    path = "reference/README.md"
    found = blocks(path, "pycon")
    # Soft MoE slots, the two losses, the shared scores, Algorithm 1, Algorithm 2, Sinkhorn, route.
    assert len(found) >= 7, f"{path} lost its worked examples: {len(found)} pycon blocks"
    test = doctest.DocTestParser().get_doctest("\n".join(found), {}, path, path, 0)
    assert len(test.examples) >= 30
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    output = []
    runner.run(test, out=output.append)
    assert runner.failures == 0, "".join(output)
