"""TLS set-up: the server context, and whether the kernel can take over the sending.

The context is the standard library's, built once per worker at start (so a restart
picks up a renewed certificate): TLS 1.2 and 1.3 only, ALPN ``http/1.1``, no
renegotiation, no compression (a modern default context does the rest).

Kernel TLS (kTLS) lets ``sendfile`` go on working after the handshake: OpenSSL hands the
session keys to the kernel, which encrypts what is written to the socket. It needs
``ssl.OP_ENABLE_KTLS`` (Python 3.12+) and a kernel with the ``tls`` module, and even then
the kernel may decline a cipher. So the decision is made per connection after the
handshake, by asking the socket itself: ``getsockopt(SOL_TLS, TLS_TX)`` returns the
transmit crypto state only when the kernel took over, and fails (EOPNOTSUPP) otherwise.
That is one syscall, and it cannot be fooled the way a global counter such as
``/proc/net/tls_stat`` can be by other processes' connections.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys

KTLS_OPTION: int = getattr(ssl, "OP_ENABLE_KTLS", 0)  # Python 3.12+ only
SOL_TLS = 282  # linux/socket.h; socket.SOL_TLS is missing from Python 3.11
TLS_TX = 1  # linux/tls.h
ALPN = ("http/1.1",)


class TlsSetupError(Exception):
    """The certificate or key cannot be used; the message is one line for the user."""


def ktls_plan() -> tuple[bool, str]:
    """Whether to ask OpenSSL for kernel TLS here, and why (for the start-up log)."""
    if not KTLS_OPTION:
        version = ".".join(map(str, sys.version_info[:2]))
        return False, f"Python {version} has no ssl.OP_ENABLE_KTLS (3.12+)"
    # A loaded or built-in module shows here; /proc/modules lists only loadable ones.
    if not os.path.isdir("/sys/module/tls"):
        return False, "the kernel has no tls module (modprobe tls)"
    return True, "ssl.OP_ENABLE_KTLS set and the kernel has the tls module"


def build_context(cert: str, key: str | None, ktls: bool = False) -> ssl.SSLContext:
    """The server context for ``cert`` (a PEM chain) and ``key`` (PEM; None when the key
    is in ``cert``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    if ktls and KTLS_OPTION:
        ctx.options |= KTLS_OPTION
    ctx.set_alpn_protocols(list(ALPN))
    for path in (cert, key):
        if path is not None and not os.path.isfile(path):  # ssl's error does not say which
            raise TlsSetupError(f"TLS certificate or key not found: {path}")
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TlsSetupError(f"TLS certificate or key unusable: {exc.reason or exc}") from None
    except OSError as exc:
        raise TlsSetupError(f"TLS certificate or key unreadable: {exc}") from None
    return ctx


def kernel_sends(sock: socket.socket) -> bool:
    """After the handshake: did the kernel take over encrypting this socket's sends?"""
    try:
        sock.getsockopt(SOL_TLS, TLS_TX, 64)
    except OSError:
        return False
    return True
