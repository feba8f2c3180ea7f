"""The pilot (``--pilot``) and the schedule: how many steps the study's runs train, at which learning rate.

``run_pilot`` trains a few arms at candidate steps and learning rates and keeps the fewest steps at which they
converge (``pilot.json``, ``pilot.md``); ``schedule`` gives a study its steps and learning rate: its options,
else a converged pilot's choice, else the preset's. ``pilot.json`` is named, written and read only here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..presets import resolve
from ..workdir import read_summary, summary_path
from .design import CONVERGENCE_POINTS, RANDOM_ROUTER, Run, Schedule, StudySpec, run_config
from .execution import StudyData, say, train_run
from .results import convergence_gain, test_curve

PILOT_ARMS = (Run("softmax_token_choice", 1, 100), Run(RANDOM_ROUTER, 1, 100, control="dense"))
PILOT_LEARNING_RATES = (1e-3, 2e-3, 4e-3)
PILOT_STEPS = (1500, 2000)  # 2000 steps is about the most the default study's 60 minutes allow on 2 CPU cores


class PilotError(RuntimeError):
    """The pilot found no steps and learning rate within its budget that meet the convergence rule."""


def schedule(spec: StudySpec, studydir: Path | None) -> Schedule:
    """(steps, learning rate, where they come from): the study's options, else a converged pilot, else the preset."""
    path = Path(studydir) / "pilot.json" if studydir is not None else None
    pilot = read_pilot(studydir) if studydir is not None else None
    preset = resolve(spec.preset)
    steps = spec.steps or (pilot["steps"] if pilot else preset.steps)
    lr = spec.learning_rate or (pilot["learning_rate"] if pilot else preset.learning_rate)
    if spec.steps is not None or spec.learning_rate is not None:
        source = "the study's options" + (" and the pilot" if pilot and (spec.steps is None or spec.learning_rate
                                                                         is None) else "")  # fmt: skip
    elif pilot:
        source = "the pilot (pilot.json)"
    elif path is not None and path.exists():
        source = (f"the {spec.preset} preset: the pilot found no setting within its budget that meets the "
                  "convergence rule (pilot.md)")  # fmt: skip
    else:
        source = f"the {spec.preset} preset (no pilot.json in the study directory)"
    return Schedule(steps, lr, source)


def read_pilot(studydir: Path) -> dict | None:
    """The pilot's result in ``studydir``, if it converged; else None."""
    path = Path(studydir) / "pilot.json"
    if not path.exists():
        return None
    pilot = json.loads(path.read_text())
    return pilot if pilot.get("status") == "converged" else None


def run_pilot(spec: StudySpec, studydir, *, steps_candidates=PILOT_STEPS, learning_rates=PILOT_LEARNING_RATES,
              arms=PILOT_ARMS, rule_points: float = CONVERGENCE_POINTS, progress: bool = True) -> dict:  # fmt: skip
    """Choose the study's steps and learning rate: the fewest candidate steps at which the best learning rate's
    runs all converge (test accuracy gains less than ``rule_points`` over their last 20% of steps).

    For each candidate number of steps (ascending), every learning rate trains every pilot arm (seed 100, a seed
    no study uses by default); the learning rate with the best mean final test accuracy over the arms is taken,
    and if all of its arms converged, the search stops. Writes ``pilot.json`` (read by later studies in the same
    directory) and ``pilot.md``; raises PilotError, naming every run that did not converge, when no candidate
    meets the rule.
    """
    studydir = Path(studydir)
    studydir.mkdir(parents=True, exist_ok=True)
    tried = []
    data = None
    chosen = None
    total = len(steps_candidates) * len(learning_rates) * len(arms)
    count = 0
    for steps in steps_candidates:
        by_lr = {}
        for lr in learning_rates:
            for arm in arms:
                count += 1
                config = run_config(spec, arm, steps, lr)
                workdir = studydir / "pilot" / f"steps{steps}-lr{lr:g}-{arm.configuration}"
                if not summary_path(workdir).exists():
                    say(progress, f"[pilot {count}/{total} at most] {arm.describe()}, {steps} steps, lr {lr:g}")
                    data = StudyData(config) if data is None else data
                    diverged = train_run(config, workdir, data=data, progress=progress)
                    if diverged is not None:
                        tried.append({"steps": steps, "learning_rate": lr, "arm": arm.configuration,
                                      "test_accuracy": math.nan, "gain": math.nan, "diverged": diverged})  # fmt: skip
                        by_lr.setdefault(lr, []).append(tried[-1])
                        continue
                final = read_summary(workdir)["test_accuracy"]
                _, gain = convergence_gain(test_curve(workdir), steps)
                tried.append({"steps": steps, "learning_rate": lr, "arm": arm.configuration,
                              "test_accuracy": final, "gain": gain})  # fmt: skip
                by_lr.setdefault(lr, []).append(tried[-1])
        means = {lr: np.mean([r["test_accuracy"] for r in results]) for lr, results in by_lr.items()}
        means = {lr: m for lr, m in means.items() if not math.isnan(m)}
        if not means:
            continue
        best = max(means, key=means.get)
        if all(r["gain"] < rule_points / 100 for r in by_lr[best]):
            chosen = (steps, best)
            break
    result = {"status": "converged" if chosen else "not converged", "rule": f"test accuracy gains less than "
              f"{rule_points} points over the last 20% of steps", "preset": spec.preset,
              "overrides": list(spec.overrides), "arms": [a.configuration for a in arms],
              "steps": chosen[0] if chosen else None, "learning_rate": chosen[1] if chosen else None,
              "runs": tried}  # fmt: skip
    (studydir / "pilot.json").write_text(json.dumps(result, indent=2))
    _write_pilot_report(result, studydir)
    if not chosen:
        late = [f"{r['arm']} ({r['steps']} steps, lr {r['learning_rate']:g}: "
                + (r["diverged"] if "diverged" in r else f"+{100 * r['gain']:.2f} pts") + ")"
                for r in tried if "diverged" in r or not r["gain"] < rule_points / 100]  # fmt: skip
        raise PilotError(
            f"the pilot found no steps in {list(steps_candidates)} and learning rate in {list(learning_rates)} at "
            f"which every pilot run gains less than {rule_points} points over its last 20% of steps; not "
            f"converged or diverged: {'; '.join(late)}. See {studydir / 'pilot.md'}"
        )
    return result


def _write_pilot_report(result: dict, studydir: Path) -> None:
    lines = [f"# Pilot: `{result['preset']}` preset", "",
             f"Rule: {result['rule']}. Arms: {', '.join(result['arms'])} (seed 100). "
             f"Outcome: **{result['status']}**" + (f", {result['steps']} steps at learning rate "
                                                   f"{result['learning_rate']:g}." if result["steps"] else "."),
             "", "| steps | learning rate | arm | final test accuracy | gain over the last 20% of steps |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in result["runs"]:
        gain = r.get("diverged", "diverged") if math.isnan(r["gain"]) else f"{100 * r['gain']:+.2f} pts"
        lines.append(f"| {r['steps']} | {r['learning_rate']:g} | {r['arm']} | {100 * r['test_accuracy']:.2f} | "
                     f"{gain} |")  # fmt: skip
    (studydir / "pilot.md").write_text("\n".join(lines) + "\n")
