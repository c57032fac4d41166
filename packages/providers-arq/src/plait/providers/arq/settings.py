"""How to reach Redis: a typed settings object, built directly or from a ``redis://`` / ``rediss://`` URL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, unquote, urlparse

from arq.connections import RedisSettings

__all__ = ["ArqSettings"]


@dataclass(frozen=True, slots=True)
class ArqSettings:
    """Connection settings of the Redis that holds flows and queues.

    Attributes:
        host: server host name.
        port: server port.
        database: database number.
        username: ACL user name, if any.
        password: password (of ``username``, or the default user), if any.
        ssl: connect with TLS.
        ssl_ca_certs: file of CA certificates to verify the server with.
        ssl_certfile: client certificate file, for mutual TLS.
        ssl_keyfile: client key file, for mutual TLS.
        ssl_cert_reqs: whether the server's certificate is ``"required"``, ``"optional"`` or not checked (``"none"``).
        ssl_check_hostname: check that the certificate matches ``host``.
        unix_socket_path: connect through this Unix socket instead of TCP.
        conn_timeout: seconds to wait for a connection.
        conn_retries: how often to retry the first connection before ``start()`` fails.
        conn_retry_delay: seconds between those retries.
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
    ssl_check_hostname: bool = False
    unix_socket_path: str | None = None
    conn_timeout: int = 1
    conn_retries: int = 5
    conn_retry_delay: int = 1

    @classmethod
    def from_url(cls, url: str) -> ArqSettings:
        """Parses ``redis://[user:password@]host[:port][/db]``, ``rediss://...`` (TLS) or ``unix:///path``.

        Args:
            url: the Redis URL; ``?db=N`` also selects the database. Use ``dataclasses.replace`` on the result
                to set what a URL cannot say (say, ``ssl_ca_certs``).

        Raises:
            ValueError: the scheme is not ``redis``, ``rediss`` or ``unix``.
        """
        parts = urlparse(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"Not a Redis URL (redis://, rediss:// or unix://): {url!r}")
        query = parse_qs(parts.query)
        database = 0
        if "db" in query:
            database = int(query["db"][0])
        elif parts.scheme != "unix" and parts.path.strip("/"):
            database = int(parts.path.strip("/"))
        return cls(
            host=parts.hostname or "localhost",
            port=parts.port or 6379,
            database=database,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            ssl=parts.scheme == "rediss",
            unix_socket_path=parts.path if parts.scheme == "unix" else None,
        )

    def redis_settings(self) -> RedisSettings:
        """The same settings as arq's :class:`~arq.connections.RedisSettings`."""
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
            ssl_check_hostname=self.ssl_check_hostname,
            conn_timeout=self.conn_timeout,
            conn_retries=self.conn_retries,
            conn_retry_delay=self.conn_retry_delay,
        )

    def __repr__(self) -> str:
        # Never print the password.
        where = self.unix_socket_path or f"{self.host}:{self.port}"
        scheme = "rediss" if self.ssl else "redis"
        return f"ArqSettings({scheme}://{where}/{self.database}, user={self.username!r})"
