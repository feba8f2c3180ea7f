"""Preemption: SIGTERM or SIGINT ends the run cleanly at a step boundary, with a checkpoint.

The first signal is only noted; the training loop finishes the step it is in, and every process agrees (one
small all-gather per step when there are several) on whether any of them saw a signal, so all save the same
step. The loop then saves, waits for the commit, and raises ``Preempted``; ``python -m train`` prints a
one-line message and exits with ``EXIT_STATUS``. The same command resumes. A second signal kills the process
at once (the default action): the last complete checkpoint is used on the next start.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np

# Choice: 75 (EX_TEMPFAIL in sysexits.h, "try again later"), for SIGTERM and SIGINT alike: distinct from success
# (0), an error (1), bad options (2) and from 128 + n, the status of a process killed by signal n before it could
# save, so a scheduler or wrapper can tell "saved, run the same command again" from "died".
EXIT_STATUS = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):  # not an error: the run saved and may be resumed
    def __init__(self, step: int, signal_name: str, workdir):
        self.step, self.signal_name = step, signal_name
        super().__init__(f"{signal_name} received: stopped after step {step}, checkpoint saved in "
                         f"{workdir}/checkpoints; run the same command again to resume")  # fmt: skip


class SignalGuard:
    """Within ``with SignalGuard() as guard:``, SIGTERM and SIGINT set ``guard.seen`` instead of ending the process
    (installed only in the main thread, where Python delivers signals)."""

    def __init__(self):
        self.seen: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.seen = signal.Signals(signum).name
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def should_stop(self) -> bool:
        """Whether any process has seen a signal; every process must call this at the same step."""
        local = self.seen is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        return bool(np.max(multihost_utils.process_allgather(np.int32(local))))
