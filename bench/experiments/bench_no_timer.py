"""Experiment, not the operator: promoter.handlers without its per-object ``drift`` timer.

Run with ``--operator-module bench_no_timer`` (scale.py, memory.py) to measure what the timer
costs: kopf adds a finalizer to every object that has a timer (a write at create, another at
delete, and deletion blocked while the operator is down) and keeps a task per object.
"""

import kopf

import promoter.handlers  # noqa: F401 - registers the operator's handlers

_spawning = kopf.get_default_registry()._spawning
_spawning._handlers[:] = [h for h in _spawning._handlers if h.id != "drift"]
