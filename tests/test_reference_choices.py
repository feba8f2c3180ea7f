"""Every choice the spec makes where the paper is silent is tagged in the code and listed in its README, once.

The code marks a choice as ``Choice [key]: reason`` (in a docstring) and tags the line that implements it with
a ``# ... Choice [key]`` comment. ``reference/README.md`` lists each key once, as `` `[key]` ``, under "Every
choice made where the paper is silent". The two sets of keys must be equal, so that neither can drift.
"""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "reference").glob("*.py"))
KEY = r"[a-z0-9]+(?:-[a-z0-9]+)*"
SECTION = "## Every choice made where the paper is silent"


def code_keys() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Keys tagged anywhere in reference/*.py, and keys tagged in a ``#`` comment, each with where they occur."""
    anywhere, in_comments = {}, {}
    for path in SOURCES:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            where = f"{path.name}:{number}"
            for key in re.findall(rf"Choice \[({KEY})\]", line):
                anywhere.setdefault(key, []).append(where)
            if "#" in line:
                for key in re.findall(rf"#.*?Choice \[({KEY})\]", line):
                    in_comments.setdefault(key, []).append(where)
    return anywhere, in_comments


def readme_keys() -> list[str]:
    text = (ROOT / "reference" / "README.md").read_text()
    assert SECTION in text, f"reference/README.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"`\[({KEY})\]`", section)


def test_readme_lists_each_choice_once():
    keys = readme_keys()
    assert len(keys) >= 20, keys
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    assert not repeated, f"listed more than once in reference/README.md: {repeated}"


def test_readme_and_code_name_the_same_choices():
    anywhere, _ = code_keys()
    listed = set(readme_keys())
    missing = listed - set(anywhere)
    assert not missing, f"in reference/README.md but tagged nowhere in reference/: {sorted(missing)}"
    unlisted = {k: anywhere[k] for k in set(anywhere) - listed}
    assert not unlisted, f"tagged in reference/ but not listed in reference/README.md: {unlisted}"


def test_every_choice_is_tagged_at_a_line_of_code():
    anywhere, in_comments = code_keys()
    untagged = {k: anywhere[k] for k in set(anywhere) - set(in_comments)}
    assert not untagged, f"choices described but not tagged with a # comment at their line: {untagged}"


def test_no_choice_without_a_key():
    bare = [
        f"{path.name}:{number}: {line.strip()}"
        for path in SOURCES
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bChoice\s*:", line)
    ]
    assert not bare, "a Choice needs a key, as Choice [key]: ...\n" + "\n".join(bare)
