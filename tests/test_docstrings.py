"""The examples in the docstrings are tests: each must run and print what it shows."""

import doctest
import importlib
import pkgutil

import pytest

import reference

MODULES = [f"reference.{m.name}" for m in pkgutil.iter_modules(reference.__path__)]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_the_examples_exist():
    # Guards the test above against silently finding nothing.
    total = sum(doctest.testmod(importlib.import_module(n)).attempted for n in MODULES)
    assert total >= 15
