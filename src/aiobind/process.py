"""The calling process's ``prctl`` settings: its parent-death signal and its comm.

``PR_SET_PDEATHSIG`` is how a forked worker hears at once that its parent is gone: the
kernel sends the signal when the thread that forked it exits, and the setting is
cleared again in the children of ``fork``, so each child sets its own. ``PR_SET_NAME``
sets the comm (``/proc/self/comm``, what ``ps -o comm``, ``pgrep`` and ``top`` show),
16 bytes with the terminating NUL; a longer name is cut by the kernel.
"""

from __future__ import annotations

import os

from aiobind._native import ffi, lib

COMM_LEN = 16  # TASK_COMM_LEN, the NUL included


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


def set_parent_death_signal(signo: int) -> None:
    """Have the kernel send ``signo`` to this process when its parent dies (0: none).

    Set it right after ``fork`` and then compare ``os.getppid()`` with the parent's pid:
    a parent that died before the call sends nothing.
    """
    _check(lib.aiob_set_pdeathsig(int(signo)), f"prctl(PR_SET_PDEATHSIG, {signo})")


def parent_death_signal() -> int:
    """The signal this process gets when its parent dies; 0 when there is none."""
    return _check(lib.aiob_get_pdeathsig(), "prctl(PR_GET_PDEATHSIG)")


def set_comm(name: str | bytes) -> None:
    """Set this thread's comm (the process's, called from the main thread)."""
    raw = os.fsencode(name)
    if b"\0" in raw:
        raise ValueError("embedded NUL byte in name")
    _check(lib.aiob_set_comm(raw), "prctl(PR_SET_NAME)")


def get_comm() -> str:
    """This thread's comm, as ``/proc/self/task/TID/comm`` shows it."""
    buf = ffi.new("char[]", COMM_LEN)
    _check(lib.aiob_get_comm(buf), "prctl(PR_GET_NAME)")
    return os.fsdecode(ffi.string(buf))
