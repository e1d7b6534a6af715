"""From URL path segments to an open file under the document root, with an open-file cache.

Confinement is the kernel's job: every open is ``openat2(RESOLVE_BENEATH)`` relative to
a directory descriptor, so ``..``, absolute paths and symlinks that lead out are refused
by the kernel itself, with no resolve-then-open race. Which directory is the boundary is
the ``symlinks`` policy (nginx's ``disable_symlinks`` is the model):

- ``root`` (default): the document root. ``dynamic/a.dat -> ../static/a.dat`` and a
  symlinked prefix (``dynamic -> static``) are followed, because real layouts have them;
  a link leaving the root is refused.
- ``prefix``: the prefix folder (``static/`` or ``dynamic/``) itself.
- ``none``: no symlink at all (``RESOLVE_NO_SYMLINKS``), in the path or as the prefix.

A followed symlink must not lead to a hidden name either (``x -> .git/config`` or
``x -> ../.env``): the URL check on hidden segments would otherwise be bypassed by any
link. So an open first tries ``RESOLVE_NO_SYMLINKS`` (the common case costs one
syscall); only when that meets a symlink is the file opened again with symlinks allowed
and its real path, read back from ``/proc/self/fd``, checked for hidden components below
the boundary. Anything unexpected there refuses the file (fail closed).

The cache keeps the descriptor, the stat result and pre-built response heads (like
nginx's ``open_file_cache``) and re-checks the path at most once per ``valid`` seconds,
so a replaced file is served within that time.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable

import aiobind
from aws import http
from aws.mime import content_type
from aws.negotiate import CODINGS
from aws.resource import Resource
from aws.sitepolicy import Fields, Policy

__all__ = ["SYMLINK_POLICIES", "FileCache", "Redirect", "Resource"]

log = logging.getLogger("aws.files")

_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_DIR_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_RESOLVE = aiobind.RESOLVE_BENEATH | aiobind.RESOLVE_NO_MAGICLINKS
_RESOLVE_NO_LINKS = _RESOLVE | aiobind.RESOLVE_NO_SYMLINKS
SYMLINK_POLICIES = ("root", "prefix", "none")
# errno values that mean "nothing servable there": not found, escaping the root
# (EXDEV), a symlink loop, a file where a directory was expected, or a Unix socket or a
# device with no driver (ENXIO, ENODEV: open cannot read those).
_NOT_FOUND = frozenset(
    {
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EXDEV,
        errno.ELOOP,
        errno.ENAMETOOLONG,
        errno.EINVAL,
        errno.ENXIO,
        errno.ENODEV,
    }
)
# Why a link was refused, when the kernel refused it: said in the log, as the README
# promises for every mode.
_LINK_REFUSED = {errno.EXDEV: "it leads outside the boundary", errno.ELOOP: "a loop"}


class Redirect(Exception):
    """The path names a directory: the client should add a slash."""


class FileCache:
    """Open files under one directory (the ``static`` or ``dynamic`` prefix)."""

    def __init__(
        self,
        root: str,
        prefix: str,
        direct: bool,
        max_entries: int = 1024,
        valid: float = 1.0,
        on_buffered: Callable[[str], None] | None = None,
        directio: int = 0,
        symlinks: str = "root",
        way: str = "",
        policy: Policy | None = None,
    ) -> None:
        if symlinks not in SYMLINK_POLICIES:
            raise ValueError(f"symlinks must be one of {SYMLINK_POLICIES}, not {symlinks!r}")
        self.directory = os.path.join(root, prefix)
        self.way = way  # how bodies from this folder leave (respond.SENDFILE or AIO)
        self.direct = direct
        # Like nginx's ``directio``: files smaller than this are read through the page
        # cache, where a hot small file costs a copy instead of a trip to the device.
        self.directio = directio
        self.max_entries = max_entries
        self.valid = valid
        self.symlinks = symlinks
        self.policy = policy if policy is not None else Policy()
        self.url_lead = b"/" + os.fsencode(prefix) + b"/"  # what the patterns match under
        self._older_logged: set[bytes] = set()
        # Open files by key, oldest first. Read by Connection._replay too: a request
        # answered again is one whose Resource is still this entry.
        self.entries: dict[bytes, Resource] = {}
        # For the metrics (the worker's sweep reads them): served from an open file, and
        # opened anew (first use, or the file changed since it was opened).
        self.hits = 0
        self.misses = 0
        self._on_buffered = on_buffered
        # _base_fd is the boundary every open stays beneath; _lead is the path from it
        # to the prefix folder (empty when the boundary is the prefix folder itself).
        self._base_fd = -1
        self._lead = b""
        self._base_real = b""
        try:
            self._open_base(root, prefix)
        except OSError as exc:
            log.warning("%s is not servable (%s): its URLs will answer 404", self.directory, exc)
            self.close()

    def _open_base(self, root: str, prefix: str) -> None:
        root_fd = os.open(root, _DIR_FLAGS)
        try:
            if self.symlinks == "root":
                # Only to warn now about a missing prefix; files open relative to the root.
                os.close(aiobind.openat2(root_fd, prefix, _DIR_FLAGS, _RESOLVE))
                self._base_fd, root_fd = root_fd, -1
                self._lead = os.fsencode(prefix) + b"/"
                self._base_real = os.fsencode(os.path.realpath(root))
            elif self.symlinks == "prefix":
                self._base_fd = aiobind.openat2(root_fd, prefix, _DIR_FLAGS, _RESOLVE)
                self._base_real = os.fsencode(os.path.realpath(self.directory))
            else:
                self._base_fd = aiobind.openat2(root_fd, prefix, _DIR_FLAGS, _RESOLVE_NO_LINKS)
        finally:
            if root_fd >= 0:
                os.close(root_fd)

    def acquire(self, segments: list[bytes], now: float, key: bytes | None = None) -> Resource:
        """The open file for these path segments; the caller must call its ``release()``.

        ``key`` is ``b"/".join(segments)`` when the caller has it already. Raises
        ``HttpError`` 404/403 or :class:`Redirect`.
        """
        if key is None:
            key = b"/".join(segments)
        res = self.entries.get(key)
        if res is not None and now - res.checked < self.valid:
            self.hits += 1
            res.refs += 1
            return res
        res = self._revalidate(key, segments, res, now)
        res.refs += 1
        return res

    def _revalidate(
        self, key: bytes, segments: list[bytes], old: Resource | None, now: float
    ) -> Resource:
        if old is not None:
            try:
                # The path _open opened: a directory's index, not the directory.
                path = key + b"index.html" if key[-1:] in (b"", b"/") else key
                st = os.stat(self._lead + path, dir_fd=self._base_fd)
            except OSError:
                st = None
            if (
                st is not None
                and old.identity
                == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                and (old.siblings is None or self._siblings_unchanged(path, old.siblings))
            ):
                old.checked = now
                old.probe = True
                self.hits += 1
                return old
            self._drop(key, old)
        self.misses += 1
        res = self._open(key, segments, now)
        if len(self.entries) >= self.max_entries:
            oldest = next(iter(self.entries))
            self._drop(oldest, self.entries[oldest])
        self.entries[key] = res
        return res

    def _drop(self, key: bytes, res: Resource) -> None:
        del self.entries[key]
        for _, variant in res.variants or ():
            variant.stale = True
            if variant.refs == 0:
                variant.close()
        res.stale = True
        if res.refs == 0:
            res.close()

    def _siblings(self, path: bytes) -> tuple[object, ...]:
        """What beside ``path`` decides its variants: its folder, then each coding's
        sibling (None when absent). A sibling made, removed or renamed changes the
        folder's mtime; one rewritten in place changes its own stat."""
        return (self._stat_of(self._folder(path)), *(self._stat_of(path + s) for _, s in CODINGS))

    def _siblings_unchanged(self, path: bytes, seen: tuple[object, ...]) -> bool:
        """The cheap re-check: the folder, and only the siblings that were there (one
        stat for a file without variants, every ``open_file_valid`` seconds)."""
        if self._stat_of(self._folder(path)) != seen[0]:
            return False
        return all(
            old is None or self._stat_of(path + suffix) == old
            for (_, suffix), old in zip(CODINGS, seen[1:], strict=True)
        )

    @staticmethod
    def _folder(path: bytes) -> bytes:
        return path.rpartition(b"/")[0]

    def _stat_of(self, path: bytes) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self._lead + path or b".", dir_fd=self._base_fd)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _variants(
        self, path: bytes, base: os.stat_result, ctype: bytes, extra: Fields, now: float
    ) -> tuple[tuple[bytes, Resource], ...]:
        """Open the precompressed siblings of ``path`` that may stand for it."""
        found = []
        for coding, suffix in CODINGS:
            try:
                fd = self._confined_open(self._lead + path + suffix)
            except http.HttpError:
                continue  # absent, or refused like any file would be
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    os.close(fd)
                    continue
                if st.st_mtime_ns < base.st_mtime_ns:
                    os.close(fd)
                    self._log_older(path + suffix)
                    continue
                direct = self._direct(fd, st)
                res = Resource(fd, st, b"", direct, now, extra, coding, True, ctype)
            except BaseException:
                os.close(fd)
                raise
            found.append((coding, res))
        return tuple(found)

    def _log_older(self, path: bytes) -> None:
        if path in self._older_logged:
            return
        if len(self._older_logged) >= 1024:
            self._older_logged.clear()
        self._older_logged.add(path)
        log.warning(
            "%s/%s is older than the file it compresses: not served until it is remade",
            self.directory,
            os.fsdecode(path),
        )

    def _direct(self, fd: int, st: os.stat_result) -> bool:
        if not (self.direct and st.st_size >= self.directio):
            return False
        direct = aiobind.set_direct(fd)
        if not direct and self._on_buffered is not None:
            self._on_buffered(self.directory)
        return direct

    def _open(self, key: bytes, segments: list[bytes], now: float) -> Resource:
        if self._base_fd < 0:
            raise http.HttpError(404, "prefix directory missing")
        for seg in segments:
            # An encoded slash (%2F) would act as a separator inside openat2 and hide
            # a ".name" component from this check (sub%2F..%2F.hidden): refuse it.
            if seg[:1] == b"." or b"/" in seg:
                raise http.HttpError(404, "hidden path segment or encoded slash")
        name = segments[-1] if segments else b""
        path = key
        if name == b"":
            name = b"index.html"
            path = key + b"index.html"
        fd = self._confined_open(self._lead + path)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise Redirect()
            if not stat.S_ISREG(st.st_mode):
                raise http.HttpError(404, "not a regular file")
            direct = self._direct(fd, st)
            policy = self.policy
            extra = policy.fields_for(self.url_lead + path)
            if not policy.precompressed:
                return Resource(fd, st, name, direct, now, extra)
            siblings = self._siblings(path)
            variants = ()
            if any(siblings[1:]):
                variants = self._variants(path, st, content_type(name), extra, now)
            res = Resource(fd, st, name, direct, now, extra, vary=bool(variants))
            res.siblings = siblings
            res.variants = variants or None
            res.codings = tuple(coding for coding, _ in variants)
            return res
        except BaseException:
            os.close(fd)
            raise

    def open_dir(self, segments: list[bytes]) -> int:
        """A descriptor of the folder these URL segments name (the last one empty), under
        the same confinement as a file; for listings. Raises HttpError."""
        if self._base_fd < 0:
            raise http.HttpError(404, "prefix directory missing")
        for seg in segments:
            if seg[:1] == b"." or b"/" in seg:
                raise http.HttpError(404, "hidden path segment or encoded slash")
        return self._confined_open(self._lead + b"/".join(segments) or b".", _DIR_READ)

    def open_beneath(self, segments: list[bytes]) -> int:
        """A descriptor of the entry these segments name, confined like a file (a
        symlink is followed only under the policy). Raises HttpError."""
        return self._confined_open(self._lead + b"/".join(segments))

    def _confined_open(self, path: bytes, flags: int = _OPEN_FLAGS) -> int:
        """Open ``path`` beneath the boundary under the symlink policy, or raise HttpError."""
        try:
            try:
                return aiobind.openat2(self._base_fd, path, flags, _RESOLVE_NO_LINKS)
            except OSError as exc:
                if exc.errno != errno.ELOOP or self.symlinks == "none":
                    raise
            # A symlink on the way: the kernel still keeps the open beneath the boundary,
            # and where it led is checked before the file is used.
            fd = aiobind.openat2(self._base_fd, path, flags, _RESOLVE)
        except OSError as exc:
            if exc.errno == errno.EACCES:
                raise http.HttpError(403, "permission denied") from None
            if exc.errno in _NOT_FOUND:
                why = _LINK_REFUSED.get(exc.errno)
                if exc.errno == errno.ELOOP and self.symlinks == "none":
                    why = "--symlinks none"
                if why is not None:
                    log.info("%s: symlink refused: %s", self._shown(path), why)
                raise http.HttpError(404, os.strerror(exc.errno)) from None
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                raise http.HttpError(503, "out of file descriptors") from None
            log.error("%s: cannot open: %s", self._shown(path), exc.strerror)
            raise http.HttpError(500, f"open failed: {exc.strerror}") from None
        why = self._hidden_target(fd)
        if why is not None:
            os.close(fd)
            log.info("%s: symlink refused: %s", self._shown(path), why)
            raise http.HttpError(404, "symlink target refused")
        return fd

    def _shown(self, path: bytes) -> str:
        """The file a path beneath the boundary names, for the log."""
        return os.path.join(self.directory, os.fsdecode(path[len(self._lead) :]))

    def _hidden_target(self, fd: int) -> str | None:
        """Why the file a symlink led to may not be served, or None when it may."""
        try:
            real = os.readlink(b"/proc/self/fd/%d" % fd)
        except OSError as exc:
            return f"its real path is unknown ({exc.strerror})"
        base = self._base_real
        if not real.startswith(base + b"/"):
            return "it resolves outside the boundary"
        if any(part[:1] == b"." for part in real[len(base) + 1 :].split(b"/")):
            return "it leads to a hidden name"
        return None

    def close(self) -> None:
        for key in list(self.entries):
            self._drop(key, self.entries[key])
        if self._base_fd >= 0:
            os.close(self._base_fd)
            self._base_fd = -1
