"""Crash points for the fault tests: read only when PROMOTER_CRASH_AT is set.

``PROMOTER_CRASH_AT=<step>`` makes the operator SIGKILL itself when a promotion reaches that
step boundary, so a test can prove that a restart converges with nothing half-done exposed.
``mid-copy`` takes a file count: ``mid-copy:2`` dies once two files are copied. ``after-promoted``
is after the Promoted status is written and before the registry record.
"""

from __future__ import annotations

import os
import signal
import sys

STEPS = ("after-gates", "mid-copy", "before-manifest", "after-secret", "after-seldon", "after-promoted")

_step, _, _count = os.environ.get("PROMOTER_CRASH_AT", "").partition(":")
if _step and _step not in STEPS:
    raise ValueError(f"PROMOTER_CRASH_AT={_step!r}: must be one of {', '.join(STEPS)}")


def checkpoint(step: str, done: int = 0) -> None:
    if step != _step or (_count and done < int(_count)):
        return
    print(f"crash point {step} reached: killing the operator", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
