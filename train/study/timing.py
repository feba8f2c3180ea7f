"""The study's training time: the median step time of every configuration, timed in one interleaved pass.

Choice: the tables and plots take training time from this pass (steps x median step time), not from the runs'
own throughput. Runs happen minutes apart on a machine whose load changes; here every configuration is compiled
first, then one step of each is timed in turn, ``spec.timing_rounds`` times, so that a change of load touches
them all alike. The runs' own figure is kept in the CSV (``train_seconds``). Cached in ``step_times.json``,
keyed by each configuration's full config.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np

from ..state import init_state
from ..trainer import make_step
from .design import Plan
from .execution import StudyData, say


def time_steps(plan: Plan, studydir: Path, *, data: StudyData, progress: bool = True) -> dict[str, float]:
    """Median seconds per training step of every configuration of the study, timed in one interleaved pass."""
    configs = plan.by_configuration()
    rounds = plan.spec.timing_rounds
    path = studydir / "step_times.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    keys = {name: config.replace(seed=0).to_json() for name, config in configs.items()}
    if cache.get("rounds") == rounds and all(cache.get("configs", {}).get(name) == key for name, key in keys.items()):
        return {name: cache["step_seconds"][name] for name in configs}

    first = next(iter(configs.values()))
    dataset = data()
    images = jax.numpy.asarray(dataset.train_images[: first.batch_size])
    labels = jax.numpy.asarray(dataset.train_labels[: first.batch_size])
    steppers = {}
    for i, (name, config) in enumerate(configs.items(), 1):
        say(progress, f"[timing {i}/{len(configs)}] compiling {name}")
        model, opt_state, optimizer, _ = init_state(config)
        state = [model, opt_state]
        step_fn = make_step(optimizer, config.label_smoothing, config.model.num_classes)

        def step(i, state=state, step_fn=step_fn):
            state[0], state[1], metrics = step_fn((images, labels, jax.random.key(i)), state[0], state[1])
            jax.block_until_ready(metrics["loss"])

        step(0)
        steppers[name] = step
    times = {name: [] for name in configs}
    say(progress, f"[timing] {rounds} interleaved rounds of {len(configs)} steps")
    for r in range(rounds):
        for name, step in steppers.items():
            start = time.perf_counter()
            step(r + 1)
            times[name].append(time.perf_counter() - start)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    path.write_text(json.dumps({"rounds": rounds, "configs": keys, "step_seconds": medians}, indent=2))
    return medians
