"""How to reach Redis: a typed settings object, built directly or from a ``redis://`` / ``rediss://`` URL.

TLS (``rediss://`` or ``ssl=True``) verifies the server's certificate and that it was issued for ``host``, as a
browser does; turn either off only for a server you reach through a tunnel you trust. No password ever appears
in a repr, an error message or a log line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlparse

from arq.connections import ArqRedis, RedisSettings

from plait.providers.arq._keys import dumps, loads

__all__ = ["ArqSettings"]

_CERT_REQS = ("required", "optional", "none")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True, slots=True)
class ArqSettings:
    """Connection settings of the Redis that holds flows and queues.

    Attributes:
        host: server host name; with TLS, the name its certificate must be issued for.
        port: server port.
        database: database number.
        username: ACL user name, if any.
        password: password (of ``username``, or the default user), if any.
        ssl: connect with TLS.
        ssl_ca_certs: file of CA certificates to verify the server with (default: the system's).
        ssl_certfile: client certificate file, for mutual TLS.
        ssl_keyfile: client key file, for mutual TLS.
        ssl_cert_reqs: whether the server's certificate is ``"required"``, ``"optional"`` or not checked (``"none"``).
        ssl_check_hostname: check that the server's certificate was issued for ``host`` (on by default; ignored
            when ``ssl_cert_reqs="none"``, which checks nothing).
        unix_socket_path: connect through this Unix socket instead of TCP.
        conn_timeout: seconds to wait for a connection.
        conn_retries: how often ``start()`` tries again when Redis cannot be reached (``plait worker`` waits
            for it instead).
        conn_retry_delay: seconds between those tries.
    """

    host: str = "localhost"
    port: int = 6379
    database: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: Literal["required", "optional", "none"] = "required"
    ssl_check_hostname: bool = True
    unix_socket_path: str | None = None
    conn_timeout: int = 1
    conn_retries: int = 5
    conn_retry_delay: int = 1

    @classmethod
    def from_url(cls, url: str) -> ArqSettings:
        """Parses ``redis://[user:password@]host[:port][/db]``, ``rediss://...`` (TLS) or ``unix:///path``.

        Args:
            url: the Redis URL. ``?db=N`` also selects the database; ``ssl_cert_reqs``, ``ssl_ca_certs``,
                ``ssl_certfile``, ``ssl_keyfile`` and ``ssl_check_hostname`` may be given as query parameters too.
                Use ``dataclasses.replace`` on the result to set anything else.

        Raises:
            ValueError: the scheme is not ``redis``, ``rediss`` or ``unix``, or a part cannot be read. The message
                never repeats the password.
        """
        parts = urlparse(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"Not a Redis URL (redis://, rediss:// or unix://): {_redact(url)}")
        # The errors name the part that is wrong, never its text: it may hold the password (redis:/u:pw@host).
        query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"Cannot read the Redis URL {_redact(url)}: the port is not a number") from None
        database_text = query.get("db", parts.path.strip("/") if parts.scheme != "unix" else "") or "0"
        if not database_text.isdigit():
            raise ValueError(f"Cannot read the Redis URL {_redact(url)}: the database is not a number") from None
        database = int(database_text)
        cert_reqs = query.get("ssl_cert_reqs", "required").lower()
        if cert_reqs not in _CERT_REQS:
            raise ValueError(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}, got {cert_reqs!r}")
        check_hostname = query.get("ssl_check_hostname", "true").lower()
        if check_hostname not in _TRUE + _FALSE:
            raise ValueError(f"ssl_check_hostname must be true or false, got {check_hostname!r}")
        return cls(
            host=parts.hostname or "localhost",
            port=port or 6379,
            database=database,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            ssl=parts.scheme == "rediss",
            ssl_ca_certs=query.get("ssl_ca_certs"),
            ssl_certfile=query.get("ssl_certfile"),
            ssl_keyfile=query.get("ssl_keyfile"),
            ssl_cert_reqs=cert_reqs,  # type: ignore[arg-type]  # checked against _CERT_REQS above
            ssl_check_hostname=check_hostname in _TRUE,
            unix_socket_path=parts.path if parts.scheme == "unix" else None,
        )

    @property
    def address(self) -> str:
        """Where the server is, as a URL without credentials: safe to log."""
        if self.unix_socket_path:
            return f"unix://{self.unix_socket_path}?db={self.database}"
        return f"{'rediss' if self.ssl else 'redis'}://{self.host}:{self.port}/{self.database}"

    def redis_settings(self) -> RedisSettings:
        """The same settings as arq's :class:`~arq.connections.RedisSettings` (whose repr shows the password:
        do not log it)."""
        return RedisSettings(
            host=self.host,
            port=self.port,
            unix_socket_path=self.unix_socket_path,
            database=self.database,
            username=self.username,
            password=self.password,
            ssl=self.ssl,
            ssl_keyfile=self.ssl_keyfile,
            ssl_certfile=self.ssl_certfile,
            ssl_cert_reqs=self.ssl_cert_reqs,
            ssl_ca_certs=self.ssl_ca_certs,
            ssl_check_hostname=self._check_hostname,
            conn_timeout=self.conn_timeout,
            conn_retries=self.conn_retries,
            conn_retry_delay=self.conn_retry_delay,
        )

    def client(self) -> ArqRedis:
        """A new client (a connection pool, connecting on first use) for these settings, with JSON job encoding
        for arq's functions: never pickle."""
        tls: dict[str, Any] = {}
        if self.ssl:
            tls = {
                "ssl": True,
                "ssl_keyfile": self.ssl_keyfile,
                "ssl_certfile": self.ssl_certfile,
                "ssl_cert_reqs": self.ssl_cert_reqs,
                "ssl_ca_certs": self.ssl_ca_certs,
                "ssl_check_hostname": self._check_hostname,
            }
        return ArqRedis(
            job_serializer=dumps,
            job_deserializer=loads,
            host=self.host,
            port=self.port,
            unix_socket_path=self.unix_socket_path,
            db=self.database,
            username=self.username,
            password=self.password,
            socket_connect_timeout=self.conn_timeout,
            **tls,
        )

    @property
    def _check_hostname(self) -> bool:
        # Python refuses to check a host name without checking the certificate it is in.
        return self.ssl_check_hostname and self.ssl_cert_reqs != "none"

    def __repr__(self) -> str:
        # Never print the password.
        return f"ArqSettings({self.address}, user={self.username!r})"


def _redact(url: str) -> str:
    """``url`` with everything between ``//`` and ``@`` hidden: a password must not reach an error message."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    at = rest.rfind("@")
    if at >= 0:
        rest = "***@" + rest[at + 1 :]
    shown = f"{scheme}{sep}{rest}" if sep else rest
    return repr(shown if len(shown) <= 200 else shown[:200] + "...")
