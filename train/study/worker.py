"""``python -m train.study.worker --claims DIR WORKDIR...``: one worker process of ``execution.train_in_workers``.

It walks the workdirs in order and trains each one it claims (a claim is a file created exclusively in the
claims directory, so two workers never train one run) and that is not finished: the run's config is the one
written in its workdir. Datasets are loaded once per data config. Imports ``train.study.execution``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..workdir import saved_config
from .execution import DIVERGED, StudyData, finished_or_diverged, say, train_run


def claim(claims: Path, workdir: Path) -> bool:
    """True if this process is the first to claim ``workdir`` in ``claims``."""
    try:
        os.close(os.open(claims / f"{workdir.parent.name}--{workdir.name}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.study.worker", description=__doc__)
    parser.add_argument("--claims", required=True, help="the claims directory shared by the workers")
    parser.add_argument("--name", default="worker", help="how its messages are headed")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("workdirs", nargs="+")
    args = parser.parse_args(argv)
    progress = not args.no_progress
    claims = Path(args.claims)
    data: dict[str, StudyData] = {}
    for workdir in map(Path, args.workdirs):
        if finished_or_diverged(workdir) or not claim(claims, workdir):
            continue
        config = saved_config(workdir)
        key = json.dumps([config.to_dict()["data"], config.model.num_classes, config.fewshot_shots])
        data.setdefault(key, StudyData(config))
        say(progress, f"[{args.name}] training {workdir}")
        diverged = train_run(config, workdir, data=data[key], progress=False)
        if diverged is not None:
            (workdir / DIVERGED).write_text(diverged + "\n")
            say(progress, f"[{args.name}] {workdir.name} diverged ({diverged}); recorded")
        else:
            say(progress, f"[{args.name}] finished {workdir.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
