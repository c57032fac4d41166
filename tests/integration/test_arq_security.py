"""TLS against a real redis-server started with TLS (Debian's build has it), and no password anywhere.

Certificates are made for each test session with the ``openssl`` command: a throwaway CA, a server certificate
for ``localhost``, one for another host, and a client certificate for mutual TLS.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from plait.core import ProviderUnavailableError
from plait.providers.arq import ArqSettings, ArqWorkflowProvider
from tests.integration.conftest import MakeRedis, PrivateRedis, free_port
from tests.integration.test_arq_provider import LINE, Data, Recorder

SECRET = "s3cret-pa55"


@dataclass(frozen=True)
class Certs:
    ca: Path
    localhost: tuple[Path, Path]  # certificate, key
    other_host: tuple[Path, Path]
    client: tuple[Path, Path]


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def _issue(directory: Path, name: str, subject: str, extensions: str) -> tuple[Path, Path]:
    key, csr, cert, ext = (directory / f"{name}.{suffix}" for suffix in ("key", "csr", "crt", "ext"))
    ext.write_text(extensions)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out",
             csr, "-subj", subject, cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", csr, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
             "-out", cert, "-extfile", ext, cwd=directory)  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    directory = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=Plait test CA", "-addext",
             "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=directory)  # fmt: skip
    server_use = "extendedKeyUsage=serverAuth\n"
    return Certs(
        ca=directory / "ca.crt",
        localhost=_issue(directory, "localhost", "/CN=localhost", f"subjectAltName=DNS:localhost\n{server_use}"),
        other_host=_issue(directory, "other", "/CN=other.example", f"subjectAltName=DNS:other.example\n{server_use}"),
        client=_issue(directory, "client", "/CN=plait-client", "extendedKeyUsage=clientAuth\n"),
    )


def tls_server(private_redis: MakeRedis, certs: Certs, server_cert: tuple[Path, Path]) -> tuple[PrivateRedis, int]:
    """A redis-server with a plain port (for the fixture's checks) and a TLS port that wants client certificates."""
    tls_port = free_port()
    cert, key = server_cert
    extra = ["--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    extra += ["--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "yes"]
    return private_redis(extra=extra), tls_port


@asynccontextmanager
async def started(provider: ArqWorkflowProvider) -> AsyncIterator[ArqWorkflowProvider]:
    await provider.start()
    try:
        yield provider
    finally:
        await provider.stop()


def once(url: str) -> ArqSettings:
    """Settings from ``url`` that try to connect once: a refusal is final here."""
    return dataclasses.replace(ArqSettings.from_url(url), conn_retries=0)


async def test_tls_with_a_certificate_for_the_host_runs_flows(private_redis: MakeRedis, certs: Certs) -> None:
    _, tls_port = tls_server(private_redis, certs, certs.localhost)
    cert, key = certs.client
    provider = ArqWorkflowProvider(
        f"rediss://localhost:{tls_port}/0", ssl_ca_certs=str(certs.ca), ssl_certfile=str(cert), ssl_keyfile=str(key)
    )
    provider.register(LINE, Recorder(("a", "b")))
    async with started(provider):
        handle = await provider.execute(LINE, Data(key="k"))
        assert (await handle.result(timeout=5)).steps == ["a", "b"]


async def test_a_unix_socket_url_runs_flows(private_redis: MakeRedis, tmp_path: Path) -> None:
    # The commits' pipelined connection takes over the socket redis-py opened, whichever kind it is.
    socket = tmp_path / "redis.sock"
    private_redis(extra=["--unixsocket", str(socket), "--unixsocketperm", "700"])
    provider = ArqWorkflowProvider(f"unix://{socket}")
    provider.register(LINE, Recorder(("a", "b")))
    async with started(provider):
        handles = [await provider.execute(LINE, Data(key=f"k{i}")) for i in range(5)]
        assert [(await h.result(timeout=5)).steps for h in handles] == [["a", "b"]] * 5


async def test_tls_refuses_a_certificate_issued_for_another_host_unless_told_not_to_check(
    private_redis: MakeRedis, certs: Certs
) -> None:
    _, tls_port = tls_server(private_redis, certs, certs.other_host)
    cert, key = certs.client
    url = f"rediss://localhost:{tls_port}/0"
    settings = dataclasses.replace(once(url), ssl_ca_certs=str(certs.ca), ssl_certfile=str(cert), ssl_keyfile=str(key))
    provider = ArqWorkflowProvider(settings)
    with pytest.raises(ProviderUnavailableError, match="not valid for 'localhost'"):
        await provider.start()
    unchecked = ArqWorkflowProvider(settings, ssl_check_hostname=False)
    unchecked.register(LINE, Recorder(("a", "b")))
    async with started(unchecked):
        assert (await (await unchecked.execute(LINE, Data(key="k"))).result(timeout=5)).key == "k"


async def test_tls_refuses_an_unknown_ca_and_a_missing_client_certificate(
    private_redis: MakeRedis, certs: Certs
) -> None:
    _, tls_port = tls_server(private_redis, certs, certs.localhost)
    cert, key = certs.client
    url = f"rediss://localhost:{tls_port}/0"
    untrusted = ArqWorkflowProvider(once(url), ssl_certfile=str(cert), ssl_keyfile=str(key))
    with pytest.raises(ProviderUnavailableError, match="certificate verify failed"):
        await untrusted.start()
    anonymous = ArqWorkflowProvider(once(url), ssl_ca_certs=str(certs.ca))
    with pytest.raises(ProviderUnavailableError):
        await anonymous.start()


def test_tls_settings_verify_the_host_name_by_default() -> None:
    settings = ArqSettings.from_url("rediss://cache.example:6380/0")
    assert (settings.ssl, settings.ssl_cert_reqs, settings.ssl_check_hostname) == (True, "required", True)
    kwargs = settings.client().connection_pool.connection_kwargs
    assert (kwargs["ssl_check_hostname"], kwargs["ssl_cert_reqs"]) == (True, "required")
    query = "ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem&ssl_check_hostname=false"
    from_query = ArqSettings.from_url(f"rediss://cache.example:6380/0?{query}")
    assert (from_query.ssl_ca_certs, from_query.ssl_certfile, from_query.ssl_keyfile) == ("/ca.pem", "/c.pem", "/k.pem")
    assert from_query.ssl_check_hostname is False
    # Checking nothing cannot check a host name either (Python refuses the combination).
    unchecked = ArqSettings.from_url("rediss://cache.example?ssl_cert_reqs=none").client()
    assert unchecked.connection_pool.connection_kwargs["ssl_check_hostname"] is False
    provider = ArqWorkflowProvider(
        "rediss://cache.example", ssl_certfile="/c.pem", ssl_keyfile="/k.pem", ssl_check_hostname=False
    )
    assert (provider.settings.ssl_certfile, provider.settings.ssl_keyfile) == ("/c.pem", "/k.pem")
    assert provider.settings.ssl_check_hostname is False
    with pytest.raises(ValueError, match="ssl_cert_reqs"):
        ArqSettings.from_url("rediss://cache.example?ssl_cert_reqs=maybe")


# -- passwords --


@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{SECRET}@cache.example:6379/0",
        f"redis:/user:{SECRET}@cache.example",
        f"user:{SECRET}@cache.example",
        f"redis://user:{SECRET}@cache.example:port/0",
        f"redis://user:{SECRET}@cache.example:6379/zero",
    ],
)
def test_a_url_that_cannot_be_read_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        ArqSettings.from_url(url)
    assert SECRET not in str(caught.value)
    assert "***@cache.example" in str(caught.value)
    with pytest.raises(ValueError) as again:
        ArqWorkflowProvider(url)
    assert SECRET not in str(again.value)


async def test_no_password_in_a_repr_an_error_or_a_log_line(
    private_redis: MakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    server = private_redis(start=False, password=SECRET)  # down: every try fails
    settings = dataclasses.replace(ArqSettings.from_url(server.url), conn_retries=1, conn_retry_delay=0)
    provider = ArqWorkflowProvider(settings)
    assert SECRET not in repr(settings) + repr(provider) + settings.address
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ProviderUnavailableError) as caught:
        await provider.start()
    assert SECRET not in str(caught.value)
    where = f"redis://127.0.0.1:{server.port}/0"
    assert [r.getMessage() for r in caplog.records if r.name == "plait.providers.arq"] == [
        f"Redis at {where} cannot be reached ({caught.value.__cause__}); try 1 of 2, next in 0s"
    ]
    assert not [r for r in caplog.records if SECRET in r.getMessage()]
    # A wrong password is refused in as many words, without repeating it.
    server.start()
    wrong = ArqWorkflowProvider(dataclasses.replace(settings, password="not-" + SECRET, conn_retries=0))
    with pytest.raises(ProviderUnavailableError) as refused:
        await wrong.start()
    assert SECRET not in str(refused.value)
