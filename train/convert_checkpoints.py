"""``python -m train.convert_checkpoints WORKDIR``: rewrite a workdir's old-format checkpoints as orbax ones.

The old format (``checkpoints/step_*.eqx`` + ``.json``, equinox-serialised leaves with a SHA-256) came before
orbax; ``train.checkpoint`` refuses it with this command. Imports ``train.checkpoint``, ``train.state`` and
``train.workdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import equinox as eqx

from optimized import with_layout

from .checkpoint import CorruptCheckpointError, digest, directory_of, legacy_files, save
from .state import init_state
from .workdir import saved_config


def convert(workdir) -> list[int]:
    """Rewrite the old-format checkpoints (``checkpoints/step_*.eqx`` + ``.json``) of ``workdir`` as orbax
    checkpoints, after checking their SHA-256; the old files move to ``checkpoints/eqx-format/``. The structure
    comes from the workdir's ``config.json``."""
    workdir = Path(workdir)
    directory = directory_of(workdir)
    model, opt_state, _, _ = init_state(saved_config(workdir))
    layout = model.layout
    # the old format predates the sequence layout: its files hold Every-2's stacked pairs
    model, opt_state = with_layout((model, opt_state), "stacked") if model.config.every_2 else (model, opt_state)
    old_dir = directory / "eqx-format"
    loaded = {}
    for path in legacy_files(directory):
        meta = json.loads(path.with_suffix(".json").read_text())
        if digest(path) != meta["sha256"]:
            raise CorruptCheckpointError(f"{path} does not match its recorded SHA-256: not converted")
        loaded[int(meta["step"])] = eqx.tree_deserialise_leaves(path, (model, opt_state))
    for path in legacy_files(directory):
        old_dir.mkdir(exist_ok=True)
        for p in (path, path.with_suffix(".json")):
            os.replace(p, old_dir / p.name)
    for step, (m, o) in sorted(loaded.items()):
        save(workdir, step, *with_layout((m, o), layout))
    return sorted(loaded)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.convert_checkpoints",
                                     description="convert a workdir's old-format checkpoints to orbax")  # fmt: skip
    parser.add_argument("workdir")
    args = parser.parse_args(argv)
    try:
        steps = convert(args.workdir)
    except (FileNotFoundError, CorruptCheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"converted steps {steps}" if steps else "nothing to convert")
    return 0


if __name__ == "__main__":
    sys.exit(main())
