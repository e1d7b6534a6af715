"""The ``SSL *`` under a standard-library ``ssl.SSLSocket``, for C that reads and writes
through it (:meth:`aiobind.replay.Replay.serve_tls`).

The ``ssl`` module has no door to its OpenSSL object, so it is found the way a debugger
would, and trusted only after OpenSSL itself confirms it:

- CPython's ``_ssl._SSLSocket`` object starts with the object header, a weak reference
  to the socket, then the ``SSL *`` (the same from 3.11 through 3.14). Only those
  versions of CPython are tried.
- libssl's functions are looked up through ``_ssl``'s own handle (``dlopen`` of its
  file with ``RTLD_NOLOAD``), so they are those of the libssl it was linked with, and
  only if their version is the one ``ssl.OPENSSL_VERSION_NUMBER`` reports: a statically
  linked ``_ssl`` has none to share.
- Each pointer is checked before use: ``SSL_get_fd`` must give the socket's descriptor
  and ``SSL_get_app_data`` the ``_ssl`` object itself, where CPython stores it.

Anything else and :func:`available` says why, and no C call ever sees the socket: the
Python path serves it as before.

    if sslhandle.available() is None:
        handle = sslhandle.of(tls_socket)   # None when it cannot be trusted
"""

from __future__ import annotations

import _ssl
import ctypes
import ssl
import sys
from typing import Any

from aiobind._native import ffi, lib

_LAYOUTS = {(3, 11), (3, 12), (3, 13), (3, 14)}  # PySSLSocket: head, Socket, ssl
_SSL_OFFSET = object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)

_why_not: str | None = "not bound yet"


def _bind() -> str | None:
    if sys.implementation.name != "cpython" or sys.version_info[:2] not in _LAYOUTS:
        return f"no known ssl object layout for {sys.implementation.name} {sys.version}"
    path = getattr(_ssl, "__file__", None)
    if path is None:
        return "the ssl module is built into the interpreter: no libssl of its own to share"
    version = lib.aiob_tls_bind(path.encode())
    if version != ssl.OPENSSL_VERSION_NUMBER:
        return f"{path} does not share its OpenSSL ({version:#x})"
    return None


def available() -> str | None:
    """None when :func:`of` can be used; otherwise why not (one line, for the log)."""
    global _why_not
    if _why_not == "not bound yet":
        _why_not = _bind()
    return _why_not


def of(sock: ssl.SSLSocket) -> Any | None:
    """The checked ``SSL *`` of a connected ``sock`` (cdata ``void *``), or None."""
    if available() is not None:
        return None
    obj = sock._sslobj  # type: ignore[attr-defined]
    if obj is None:
        return None
    address = ctypes.c_void_p.from_address(id(obj) + _SSL_OFFSET).value
    if not address:
        return None
    handle = ffi.cast("void *", address)
    owner = ffi.cast("void *", id(obj))
    if not lib.aiob_tls_owns(handle, sock.fileno(), owner):
        return None
    return handle
