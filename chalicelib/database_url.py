"""Where the database is and how securely to reach it: ``DATABASE_URL`` parsed into
``ConnectParams``, the production TLS policy, and the SSL context that enforces it.

Used by ``config`` (a malformed or refused URL stops the cold start) and by the pool (``db_pool``)
when it connects. Errors never carry any part of the URL: a password with an unencoded ``#`` or
``@`` would otherwise end up in a log line.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True)
class ConnectParams:
    user: str
    database: str
    password: str | None = None
    host: str | None = None
    port: int = 5432
    unix_sock: str | None = None
    sslmode: str = "verify-full"
    sslrootcert: str | None = None

    def describe(self) -> str:
        """Where this points, without the password (safe to log)."""
        where = self.unix_sock or f"{self.host}:{self.port}"
        return f"{self.user}@{where}/{self.database}"

    @property
    def is_local(self) -> bool:
        """A Unix socket or a loopback address: the traffic never leaves the machine."""
        return self.unix_sock is not None or (self.host or "") in LOOPBACK_HOSTS

    @property
    def verifies_server(self) -> bool:
        return self.sslmode in VERIFYING_SSL_MODES


# libpq's modes. ``allow``/``prefer``/``require`` encrypt (or not) without checking who answers:
# outside loopback they are accepted only outside production (see ``check_tls_policy``).
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
VERIFYING_SSL_MODES = ("verify-ca", "verify-full")
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class DatabaseUrlError(ValueError):
    """``DATABASE_URL`` is malformed or refused. The message never contains any part of the URL:
    a password with an unencoded ``#`` or ``@`` would otherwise end up in a log line."""


def parse_database_url(url: str) -> ConnectParams:
    """Parse ``postgresql://user:pass@host:port/db?sslmode=…`` or ``postgresql://user@/db?host=/dir``.

    A TCP URL without ``sslmode`` means ``verify-full`` (a loopback host means ``disable``: the
    bytes never leave the machine). Errors are ``DatabaseUrlError`` and name what is wrong, never
    a value from the URL.
    """
    try:
        return _parse_database_url(url)
    except DatabaseUrlError:
        raise
    except (ValueError, TypeError, UnicodeError):
        # urllib's own messages quote pieces of the URL (e.g. "Port could not be cast to integer
        # value as '<rest of the password>'"): never let them out.
        raise DatabaseUrlError("is not a valid postgresql:// URL (percent-encode special characters "
                               "such as # @ / : in the user name and password)") from None


def _parse_database_url(url: str) -> ConnectParams:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise DatabaseUrlError("must start with postgresql://")
    if parts.fragment or "#" in url:
        raise DatabaseUrlError("contains '#': percent-encode it (%23) in the password")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    user = unquote(parts.username or "postgres")
    password = unquote(parts.password) if parts.password is not None else None
    database = unquote(parts.path.lstrip("/")) or user
    raw_port = query.get("port") or parts.port or 5432
    if not str(raw_port).isdigit() or not 0 < int(raw_port) < 65536:
        raise DatabaseUrlError("has an invalid port")
    port = int(raw_port)
    socket_dir = query.get("host")
    if socket_dir and socket_dir.startswith("/"):
        return ConnectParams(user=user, password=password, database=database, port=port,
                             unix_sock=f"{socket_dir.rstrip('/')}/.s.PGSQL.{port}", sslmode="disable")
    host = parts.hostname or socket_dir
    if not host:
        raise DatabaseUrlError("names neither a host nor a socket directory (?host=/dir)")
    sslmode = query.get("sslmode") or ("disable" if host in LOOPBACK_HOSTS else "verify-full")
    if sslmode not in SSL_MODES:
        raise DatabaseUrlError("has an unknown sslmode; use verify-full")
    return ConnectParams(user=user, password=password, database=database, host=host, port=port,
                         sslmode=sslmode, sslrootcert=query.get("sslrootcert"))


def check_tls_policy(params: ConnectParams, *, production: bool) -> None:
    """Refuse, in production, a TCP connection to another machine that does not verify the server.

    ``disable`` sends the password and every row in clear text; ``require``/``prefer``/``allow``
    encrypt but accept any certificate, so anyone on the path can answer. Only ``verify-full``
    (or ``verify-ca``) is protection; loopback hosts and Unix sockets never leave the machine.
    """
    if production and not params.is_local and not params.verifies_server:
        raise DatabaseUrlError("sslmode must be verify-full (or verify-ca) for a non-local host in "
                               "production; disable, allow, prefer and require do not check the server")


def make_ssl_context(params: ConnectParams) -> ssl.SSLContext | None:
    """A context that really verifies the server (never pg8000's unverified ``ssl_context=True``)."""
    if params.unix_sock or params.sslmode == "disable":
        return None
    if params.sslmode in ("allow", "prefer") and params.is_local:
        return None  # libpq would try TLS first; on loopback there is nothing to protect
    if not params.verifies_server:
        # require (and allow/prefer to another host), only ever outside production: encrypted,
        # but any certificate is accepted, as libpq does.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        return insecure
    ctx = ssl.create_default_context(cafile=params.sslrootcert)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = params.sslmode == "verify-full"
    return ctx
