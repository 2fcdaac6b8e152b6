"""Named crash points for fault-injection tests (FAULTS.md "hooks").

Setting ``TVREG_FAULT=<point>`` makes the process SIGKILL itself when it reaches that
point, so a test can prove that a kill at exactly that moment loses nothing. Unset in
normal use; the check is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    if os.environ.get("TVREG_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
