"""Start a command the way systemd starts a socket-activated service.

``python tests/activate.py FD [FD ...] -- COMMAND ...``: the given descriptors become 3, 4,
... (SD_LISTEN_FDS_START), LISTEN_FDS says how many, LISTEN_PID is the pid that runs
COMMAND (this one: exec keeps it), and COMMAND replaces this process.
"""

from __future__ import annotations

import fcntl
import os
import sys


def main(argv: list[str]) -> None:
    split = argv.index("--")
    fds, command = [int(a) for a in argv[:split]], argv[split + 1 :]
    # Move them out of the way first: a source may itself be 3 or 4.
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
    for fd in fds:
        os.close(fd)
    for target, fd in enumerate(moved, start=3):
        os.dup2(fd, target)  # dup2 clears close-on-exec: the command inherits it
        os.close(fd)
    os.environ["LISTEN_FDS"] = str(len(fds))
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
