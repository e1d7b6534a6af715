"""Process titles the way nginx sets them, for ``ps``, ``top -c`` and ``htop``.

``setproctitle`` rewrites the argument area (``/proc/PID/cmdline``). On Linux it also
renames the comm (``prctl(PR_SET_NAME)``: ``/proc/PID/comm``, what ``ps -o comm``,
``pgrep`` and ``top`` show) to the title's first 15 bytes, and no environment knob turns
that off (``SPT_NOENV`` only keeps ``/proc/PID/environ`` intact, ``SPT_DEBUG`` only
logs). So the comm the process started with is put back after every title: ``aws``
when started through the ``aws`` console script, the interpreter's name for
``python -m aws``, and ``pgrep aws`` / ``killall python3`` keep meaning what they did
(but for the microseconds between the two calls).
"""

from __future__ import annotations

import setproctitle

import aiobind

_started_as: str | None = None


def set_title(title: str) -> None:
    global _started_as
    if _started_as is None:
        _started_as = aiobind.get_comm()
    setproctitle.setproctitle(title)
    aiobind.set_comm(_started_as)
