"""Preemption: SIGTERM or SIGINT ends the run cleanly at a step boundary, with a checkpoint.

The first signal is only noted; the training loop finishes the step it is in, and every process agrees on the
step to stop after, so all save the same step. The loop then saves, waits for the commit, and raises
``Preempted``; ``python -m train`` prints a one-line message and exits with ``EXIT_STATUS``. The same command
resumes.

How the processes agree:

- one process: the signal handler's note is read after every step;
- several (``jax.distributed``): through JAX's preemption sync point
  (``multihost_utils.reached_preemption_sync_point``), which costs nothing per step: it is a local check. JAX's
  notifier (installed by ``jax.distributed.initialize``) catches SIGTERM on any process and tells the
  coordination service; a background thread of every process then collects each process's step and sets the
  sync point to the largest + 1, the first step every process can still reach. A SIGINT is handed to that
  notifier as a SIGTERM. Outside the training loop (after the last step, after evaluation) the processes agree
  with one small all-gather, as they do when JAX's preemption service is off (``jax_enable_preemption_service``).

A second signal kills the process at once (the default action): the last complete checkpoint is used on the next
start. Choice: with several processes, a second SIGTERM is swallowed by JAX's notifier (it owns SIGTERM); a
second SIGINT still kills, and a scheduler's SIGKILL after its grace period always does.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
import numpy as np

# Choice: 75 (EX_TEMPFAIL in sysexits.h, "try again later"), for SIGTERM and SIGINT alike: distinct from success
# (0), an error (1), bad options (2) and from 128 + n, the status of a process killed by signal n before it could
# save, so a scheduler or wrapper can tell "saved, run the same command again" from "died".
EXIT_STATUS = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The coordination-service key JAX's preemption sync manager sets when a process receives a notice (tsl's
# preemption_sync_manager.cc); read only outside the training loop.
_NOTICE_KEY = "RECEIVED_PREEMPTION_NOTICE"


class Preempted(Exception):  # not an error: the run saved and may be resumed
    def __init__(self, step: int, signal_name: str, workdir):
        self.step, self.signal_name = step, signal_name
        super().__init__(f"{signal_name} received: stopped after step {step}, checkpoint saved in "
                         f"{workdir}/checkpoints; run the same command again to resume")  # fmt: skip


def _sync_manager():
    """JAX's preemption sync manager when this is one of several processes and the service is on, else None."""
    if jax.process_count() == 1:
        return None
    from jax._src import distributed

    return distributed.global_state.preemption_sync_manager


class SignalGuard:
    """Within ``with SignalGuard() as guard:``, SIGTERM and SIGINT set ``guard.seen`` instead of ending the process
    (installed only in the main thread, where Python delivers signals). With several processes SIGTERM is left to
    JAX's preemption notifier, and SIGINT is passed on to it."""

    def __init__(self):
        self.seen: str | None = None
        self._previous = {}
        self._sync = None

    def _handle(self, signum, frame):
        self.seen = signal.Signals(signum).name
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once
        if self._sync is not None:  # JAX's notifier tells the other processes
            os.kill(os.getpid(), signal.SIGTERM)

    def __enter__(self):
        self._sync = _sync_manager()
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                if sig == signal.SIGTERM and self._sync is not None:
                    continue  # JAX's notifier catches it (a Python handler would replace its handler)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    @property
    def name(self) -> str:
        """What stopped the run, for ``Preempted``'s message."""
        if self.seen is not None:
            return self.seen
        return "a preemption notice (SIGTERM or SIGINT to one of the processes)" if self._sync else "a signal"

    def should_stop(self, step: int | None = None) -> bool:
        """Whether to stop now; every process calls it at the same points. In the training loop ``step`` is the
        step just finished (increasing by one from the first step of this start): with several processes, whether
        it is JAX's preemption sync point (a local check, no communication). Without ``step`` (outside the loop):
        whether any process saw a signal, agreed by one all-gather."""
        if jax.process_count() == 1:
            return self.seen is not None
        from jax.experimental import multihost_utils

        if step is not None and self._sync is not None:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return bool(np.max(multihost_utils.process_allgather(np.int32(self._local_notice()))))

    def _local_notice(self) -> bool:
        if self.seen is not None or self._sync is None:
            return self.seen is not None
        from jax._src import distributed

        try:  # set by the sync manager of the process that was signalled
            distributed.global_state.client.key_value_try_get(_NOTICE_KEY)
        except Exception:  # NOT_FOUND: no notice
            return False
        return True
