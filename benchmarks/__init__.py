"""Measurements of the project's code: scripts run as ``python benchmarks/<name>.py``, each writing what it measured.

A benchmark may import ``reference`` and ``optimized`` (it compares them), never ``tests``.
"""
