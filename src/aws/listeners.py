"""The sockets the server listens on: TCP, a Unix socket, or sockets inherited from systemd.

- TCP: one ``SO_REUSEPORT`` socket per worker, bound before any fork, so the kernel
  spreads connections over the workers (no accept lock, no thundering herd).
- ``--unix PATH``: one socket that every worker accepts from, beside TCP or instead of it
  (``--plain off``).
- HTTPS (``--tls-cert``): one ``SO_REUSEPORT`` socket per worker on ``--tls-port``,
  beside the plain ones or instead of them (``--plain off``).
- systemd socket activation (``LISTEN_FDS``/``LISTEN_PID``, sd_listen_fds(3)): the
  inherited sockets are used as they are, shared by every worker, and they replace
  ``--host/--port`` and ``--unix`` (the unit's ``ListenStream=`` owns the addresses).

The supervisor keeps all of them open for its whole life, so a worker that is replaced
(a crash or a reload) leaves queued connections waiting for its successor, not refused.
A worker in a crash loop is the exception: while its restart is put off, the kernel
would go on handing it a share of the new connections to wait in a queue nobody reads,
for up to the back-off's 5 s. So the supervisor takes its own sockets out of their
``SO_REUSEPORT`` groups (:meth:`Listeners.pause`: ``shutdown`` of a listening socket
stops it listening but keeps it bound) and the successor puts them back with
``listen`` once it can serve. The few connections queued at that moment are reset
(or moved to another socket of the group where ``net.ipv4.tcp_migrate_req`` is on).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import socket
import stat
from dataclasses import dataclass, field

from aws import tls
from aws.config import Config

log = logging.getLogger("aws.listeners")

SD_LISTEN_FDS_START = 3


class StartupError(Exception):
    """The server cannot start; the message is one line for the user."""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _probe_port(host: str, port: int) -> None:
    """Fail if anything listens there (our own sockets use SO_REUSEPORT, which would
    otherwise let two servers share a port without a word)."""
    probe = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"port {port} on {host} is already in use") from None
        raise StartupError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    finally:
        probe.close()


def tcp_listener(host: str, port: int, backlog: int) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Accepted sockets inherit it: no Nagle stall behind a small response.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _pick_port(host: str) -> socket.socket:
    """--port 0: a socket bound to a port the kernel picked, holding it while the
    listeners bind it by number. A socket bound to port 0 would give its port back
    when it stops listening (a pause), and listen again on another."""
    holder = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((host, 0))
    except OSError as exc:
        holder.close()
        raise StartupError(f"cannot bind {host}:0: {exc.strerror}") from None
    return holder


def make_listeners(host: str, port: int, count: int, backlog: int) -> list[socket.socket]:
    holder = None
    if port:
        _probe_port(host, port)
    else:
        holder = _pick_port(host)
        port = holder.getsockname()[1]  # every worker shares the pick
    listeners: list[socket.socket] = []
    try:
        for _ in range(count):
            listeners.append(tcp_listener(host, port, backlog))
    except StartupError:
        for sock in listeners:
            sock.close()
        raise
    finally:
        if holder is not None:
            holder.close()
    return listeners


def _owner(spec: str) -> tuple[int, int]:
    """``user[:group]`` (names or numbers) -> uid, gid; -1 leaves one unchanged."""
    user, _, group = spec.partition(":")
    try:
        uid = -1 if not user else int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
        gid = -1 if not group else int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise StartupError(f"--unix-owner {spec}: no such user or group {exc}") from None
    return uid, gid


def _clear_stale(path: str) -> None:
    """Remove a socket file left by a server that is gone; refuse one still answering."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"--unix {path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)
            return
    raise StartupError(f"--unix {path}: another server is listening there")


def unix_listener(path: str, mode: int, owner: str | None, backlog: int) -> socket.socket:
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # Set before listen: no client can connect while the file still has umask rights.
        os.chmod(path, mode)
        if owner:
            os.chown(path, *_owner(owner))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise StartupError(f"cannot listen on unix:{path}: {exc.strerror}") from None
    except StartupError:
        sock.close()
        os.unlink(path)
        raise
    return sock


def inherited() -> list[socket.socket]:
    """The sockets systemd passed to this process (sd_listen_fds), once: the variables
    are removed so nothing started later takes them for its own."""
    pid, count = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS")
    if pid is None or count is None or not pid.isdigit() or int(pid) != os.getpid():
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    socks = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise StartupError(f"LISTEN_FDS: descriptor {fd} is not a socket ({exc})") from None
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            raise StartupError(f"LISTEN_FDS: descriptor {fd} is not a listening stream socket")
        sock.setblocking(False)
        socks.append(sock)
    return socks


def describe(sock: socket.socket, scheme: str = "http") -> str:
    addr = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{addr.decode() if isinstance(addr, bytes) else addr}"
    host = f"[{addr[0]}]" if sock.family == socket.AF_INET6 else addr[0]
    return f"{scheme}://{host}:{addr[1]}"


def check_tls(config: Config) -> None:
    """A bad certificate or key stops the start with one line, not a restart loop."""
    if config.tls_cert is None:
        if config.tls_key is not None:
            raise StartupError("--tls-key needs --tls-cert")
        return
    try:
        tls.build_context(config.tls_cert, config.tls_key)
    except tls.TlsSetupError as exc:
        raise StartupError(str(exc)) from None


@dataclass
class Listeners:
    """What the workers accept from: ``own[i]`` is worker i's alone, ``shared`` all of
    theirs. ``unix_path`` is removed at exit (the file is ours)."""

    own: list[socket.socket] = field(default_factory=list)
    shared: list[socket.socket] = field(default_factory=list)
    secure: list[socket.socket] = field(default_factory=list)  # secure[i]: worker i's TLS
    unix_path: str | None = None
    activated: bool = False

    def for_worker(self, index: int) -> list[socket.socket]:
        mine = [self.own[index]] if index < len(self.own) else []
        return mine + self.shared

    def tls_for_worker(self, index: int) -> list[socket.socket]:
        return [self.secure[index]] if index < len(self.secure) else []

    def not_for(self, index: int) -> list[socket.socket]:
        """The other workers' own sockets: a worker closes them after fork."""
        return [
            sock for group in (self.own, self.secure) for i, sock in enumerate(group) if i != index
        ]

    def resize(self, count: int, backlog: int) -> None:
        """Reload with another --workers: as many own TCP sockets, on the same port."""
        for group in (self.own, self.secure):
            if not group:
                continue
            host, port = group[0].getsockname()[:2]
            while len(group) < count:
                group.append(tcp_listener(host, port, backlog))
            while len(group) > count:
                group.pop().close()

    def own_of(self, index: int) -> list[socket.socket]:
        """Worker ``index``'s own TCP sockets (plain and TLS): the ones it may pause."""
        return [group[index] for group in (self.own, self.secure) if index < len(group)]

    def pause(self, index: int) -> bool:
        """Stop worker ``index``'s own sockets listening, so that their REUSEPORT groups
        send new connections to the others; :func:`rejoin` undoes it. A socket is kept
        listening when no other of its group listens (a successor not yet serving is no
        reason to refuse the port). Returns whether any was paused."""
        paused = False
        for group in (self.own, self.secure):
            if index >= len(group) or not _listens(group[index]):
                # Not twice: on a socket that no longer listens, shutdown would mark it
                # shut for reading, and every connection accepted once it listens again
                # would inherit that (and read nothing).
                continue
            if not any(_listens(other) for i, other in enumerate(group) if i != index):
                continue
            try:
                group[index].shutdown(socket.SHUT_RD)
            except OSError as exc:
                log.warning("could not pause worker %d's socket: %s", index, exc.strerror)
                continue
            paused = True
        return paused

    def names(self) -> str:
        socks = self.own[:1] + self.shared
        return " and ".join(describe(s) for s in socks)

    def announce(self, log: logging.Logger, workers: int, root: str) -> None:
        """The listening lines (test harnesses and people wait for the first one)."""
        where = f"with {workers} worker{'' if workers == 1 else 's'}, root {root}"
        if self.own or self.shared:
            log.info("aws listening on %s %s", self.names(), where)
        if self.secure:
            also = "" if self.own or self.shared else f", HTTPS only, {where}"
            log.info("aws listening on %s (TLS)%s", describe(self.secure[0], "https"), also)

    def port(self) -> int:
        for sock in self.own + self.shared + self.secure:
            if sock.family != socket.AF_UNIX:
                return int(sock.getsockname()[1])
        return 0

    def close(self) -> None:
        for sock in self.own + self.shared + self.secure:
            sock.close()
        self.own, self.shared, self.secure = [], [], []
        if self.unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)
            self.unix_path = None


def _listens(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def rejoin(socks: list[socket.socket], backlog: int) -> None:
    """Listen again on sockets :meth:`Listeners.pause` took out (on one still listening
    this only sets the backlog it already has)."""
    for sock in socks:
        sock.listen(backlog)


# Settings a reload cannot change: the sockets are kept, not opened again.
_KEPT = (
    "host",
    "port",
    "plain",
    "unix",
    "unix_mode",
    "unix_owner",
    "metrics",
    "backlog",
    "tls_port",
)


def restart_needed(old: Config, new: Config) -> list[str]:
    """The flags whose new value a reload cannot apply (it keeps the sockets)."""
    changed = [
        f"--{name.replace('_', '-')}" for name in _KEPT if getattr(old, name) != getattr(new, name)
    ]
    if (old.workers == 1) != (new.workers == 1):
        changed.append("--workers (to or from 1)")
    if (old.tls_cert is None) != (new.tls_cert is None):
        changed.append("--tls-cert (HTTPS on or off)")
    return changed


def open_listeners(config: Config, workers: int) -> Listeners:
    check_tls(config)
    socks = inherited()
    out = Listeners(shared=socks, activated=bool(socks))
    try:
        if not socks:
            if config.plain == "on":
                out.own = make_listeners(config.host, config.port, workers, config.backlog)
            if config.unix:
                out.shared.append(
                    unix_listener(config.unix, config.unix_mode, config.unix_owner, config.backlog)
                )
                out.unix_path = config.unix
        if config.tls_cert is not None:
            out.secure = make_listeners(config.host, config.tls_port, workers, config.backlog)
    except StartupError:
        out.close()
        raise
    if not out.own and not out.shared and not out.secure:
        raise StartupError(
            "nothing to listen on: --plain off needs --tls-cert, --unix or systemd sockets"
        )
    return out
