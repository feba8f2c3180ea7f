"""Progress bars with rate and ETA (tqdm), readable on a terminal and in a log. Imports nothing of ``train``."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, start: int = 0, enabled: bool = True, unit: str = "step") -> tqdm:
    """A tqdm bar on stderr (rate and ETA). On a terminal it redraws at most 10 times a second; written to a file
    or a pipe (a log, CI) it writes a line at most every 30 s, so logs stay readable."""
    tty = sys.stderr.isatty()
    # Choice: no tqdm monitor thread (it only tunes how often bars redraw): nothing runs beside JAX's own threads.
    tqdm.monitor_interval = 0
    return tqdm(total=total, initial=start, disable=not enabled, unit=unit, file=sys.stderr, dynamic_ncols=tty,
                mininterval=0.1 if tty else 30.0, ascii=not tty)  # fmt: skip
