"""Records the calls a property makes, so that a failure can be printed as a runnable snippet."""

from __future__ import annotations

import types

import numpy as np


def _literal(value, names: dict[int, str]) -> str:
    if id(value) in names:
        return names[id(value)]
    if isinstance(value, np.ndarray):
        return f"np.array({value.tolist()!r}, dtype=np.{value.dtype})"
    if isinstance(value, tuple):
        return "(" + ", ".join(_literal(v, names) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v, names) for v in value) + "]"
    if isinstance(value, float | int | str | bool | type(None)):
        return repr(value)
    return f"<{type(value).__name__}>"


class Recorder:
    """Wraps implementation modules; each call through a wrapper is logged with its arguments."""

    def __init__(self):
        self.calls: list[tuple[str, str, tuple, dict, object]] = []

    def clear(self) -> None:
        self.calls.clear()

    def wrap(self, module: types.ModuleType, alias: str):
        recorder = self

        class _Proxy:
            __name__ = module.__name__

            def __getattr__(self, name):
                value = getattr(module, name)
                if not callable(value) or isinstance(value, type):
                    return value

                def call(*args, **kwargs):
                    entry = [alias, name, args, kwargs, None]
                    recorder.calls.append(entry)
                    try:
                        result = value(*args, **kwargs)
                    except Exception as err:
                        entry[4] = err  # the runner reads it (an adapter's NotCovered: the call did not count)
                        raise
                    entry[4] = result
                    return result

                return call

        return _Proxy()

    def snippet(self, modules: dict[str, str], calls: list | None = None) -> str:
        """Python that replays ``calls`` (default: the recorded calls); ``modules`` maps alias to importable
        module name."""
        lines = ["import numpy as np"] + [f"import {name} as {alias}" for alias, name in modules.items()]
        names: dict[int, str] = {}
        for i, (alias, name, args, kwargs, result) in enumerate(self.calls if calls is None else calls):
            rendered = [_literal(a, names) for a in args] + [f"{k}={_literal(v, names)}" for k, v in kwargs.items()]
            var = f"r{i}"
            # Only arrays and tuples are named: Python numbers are shared objects (every 1 has one id), so naming
            # them would print a later literal 1 as this call's result.
            if isinstance(result, np.ndarray | tuple) or hasattr(result, "shape"):
                names[id(result)] = var
            lines.append(f"{var} = {alias}.{name}({', '.join(rendered)})")
        return "\n".join(lines)
