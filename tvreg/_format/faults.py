"""Named crash points for fault-injection tests (the hooks behind docs/reliability.md).

``TVREG_FAULT=<point>`` makes the process SIGKILL itself when it reaches that point;
``TVREG_FAULT=<point>:SIGINT`` sends it Ctrl-C there instead. Tests use this to prove
that a kill or an interrupt at exactly that moment loses nothing. Unset in normal use;
the check is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    fault = os.environ.get("TVREG_FAULT")
    if fault == name:
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == f"{name}:SIGINT":
        os.kill(os.getpid(), signal.SIGINT)
