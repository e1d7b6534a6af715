"""HTTPS test helpers: a CA and a server certificate made at test time (trustme), a
server started with its TLS listener, and TLS clients that read one response at a time."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

from tests.conftest import DocRoot, RawClient, ServerProcess, start_server


@dataclass
class Certs:
    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx


def make_certs(folder: Path) -> Certs:
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    certs = Certs(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    ca.cert_pem.write_to_path(str(certs.ca))
    issued.private_key_pem.write_to_path(str(certs.key))
    issued.cert_chain_pems[0].write_to_path(str(certs.cert))
    for blob in issued.cert_chain_pems[1:]:  # intermediates, if trustme makes any
        blob.write_to_path(str(certs.cert), append=True)
    return certs


@dataclass
class Https:
    srv: ServerProcess
    port: int
    certs: Certs

    @property
    def addr(self) -> tuple[str, int]:
        return (self.srv.host, self.port)

    @property
    def url(self) -> str:
        return f"https://{self.srv.host}:{self.port}"

    def connect(self, timeout: float = 10.0) -> ssl.SSLSocket:
        raw = socket.create_connection(self.addr, timeout=timeout)
        return self.certs.client_context().wrap_socket(raw, server_hostname=self.srv.host)


def start_https(
    root: Path, *, docroot: DocRoot, certs: Certs, extra: list[str] | None = None, **kwargs: object
) -> Https:
    flags = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key), "--tls-port", "0"]
    srv = start_server(root, docroot=docroot, extra=[*flags, *(extra or [])], **kwargs)  # type: ignore[arg-type]
    found = srv.wait_for_log(r"listening on https://[^\s]+:(\d+)")
    assert found is not None, srv.log()
    return Https(srv, int(found.group(1)), certs)


class TlsRawClient(RawClient):
    """:class:`RawClient` over TLS: a keep-alive connection, one response at a time."""

    def __init__(self, https: Https, timeout: float = 10.0) -> None:
        self.sock = https.connect(timeout)
        self.buf = b""

    def big_response(self) -> tuple[int, dict[str, str], bytearray]:
        """:meth:`response` for large bodies: SSL hands out one 16 KiB record per recv,
        and growing bytes by += would copy the body thousands of times."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed before a full head: {self.buf[:200]!r}")
        head, rest = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", 0))
        body = bytearray(rest)
        while len(body) < length:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError(f"closed after {len(body)} of {length} body bytes")
            body += chunk
        self.buf = bytes(body[length:])
        del body[length:]
        return int(lines[0].split()[1]), headers, body
