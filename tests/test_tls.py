"""aws.tls alone: the server context, the kTLS plan on this machine, the per-socket check
of whether the kernel took over, and the start-up check of the certificate."""

from __future__ import annotations

import socket
import ssl
import sys
import threading
from pathlib import Path

import pytest

from aws import tls
from aws.config import Config
from aws.listeners import StartupError, check_tls
from tests.tls_helpers import Certs, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_context_is_tls_1_2_or_later_with_alpn(certs: Certs) -> None:
    ctx = tls.build_context(str(certs.cert), str(certs.key))
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.protocol is ssl.PROTOCOL_TLS_SERVER
    # Without kernel TLS in this Python, the option is simply absent.
    assert not (tls.KTLS_OPTION and ctx.options & tls.KTLS_OPTION)


def test_unusable_certificates_name_the_problem(certs: Certs, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("junk\n")
    with pytest.raises(tls.TlsSetupError, match="unusable"):
        tls.build_context(str(junk), str(certs.key))
    with pytest.raises(tls.TlsSetupError, match=f"not found: {tmp_path / 'nope.pem'}"):
        tls.build_context(str(certs.cert), str(tmp_path / "nope.pem"))
    # A key that is not the certificate's.
    other = make_certs(tmp_path)
    with pytest.raises(tls.TlsSetupError, match="unusable"):
        tls.build_context(str(certs.cert), str(other.key))


def test_check_tls_at_start(certs: Certs, tmp_path: Path) -> None:
    check_tls(Config())  # no TLS asked for: nothing to check
    check_tls(Config(tls_cert=str(certs.cert), tls_key=str(certs.key)))
    with pytest.raises(StartupError, match="--tls-key needs --tls-cert"):
        check_tls(Config(tls_key=str(certs.key)))
    with pytest.raises(StartupError, match="not found"):
        check_tls(Config(tls_cert=str(tmp_path / "none.pem"), tls_key=str(certs.key)))


def test_ktls_plan_says_why_on_this_machine() -> None:
    wanted, why = tls.ktls_plan()
    if not hasattr(ssl, "OP_ENABLE_KTLS"):
        assert not wanted
        assert f"Python {sys.version_info[0]}.{sys.version_info[1]}" in why
        assert "OP_ENABLE_KTLS" in why
    elif not Path("/sys/module/tls").is_dir():
        assert not wanted and "tls module" in why
    else:
        assert wanted


def test_kernel_sends_is_false_without_ktls(certs: Certs) -> None:
    """After a real handshake without kTLS, getsockopt(SOL_TLS, TLS_TX) fails: the
    connection takes the SSL_write path."""
    server_ctx = tls.build_context(str(certs.cert), str(certs.key))
    client_ctx = certs.client_context()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        b = socket.create_connection(listener.getsockname())
        a, _ = listener.accept()
    with a, b:
        result: list[bool] = []

        def serve() -> None:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                result.append(tls.kernel_sends(s))
                s.sendall(b"x")

        t = threading.Thread(target=serve)
        t.start()
        with client_ctx.wrap_socket(b, server_hostname="localhost") as c:
            assert c.selected_alpn_protocol() == "http/1.1"
            assert c.recv(1) == b"x"
        t.join(10)
    assert result == [False]  # a context without OP_ENABLE_KTLS: the kernel never takes over
    with socket.socket() as plain:
        assert not tls.kernel_sends(plain)
