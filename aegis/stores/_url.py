"""Where a store is: the one parser of store locations, and passwords kept out of messages.

Every part of Aegis that is given a store location (``AuditLogger``,
``open_stores``, ``aegis serve``, ``aegis mcp-proxy``, the command line)
asks :func:`parse_store_url` which engine it names; nothing else decides
"is this PostgreSQL?". The forms:

=============================================  =========  ==========================
location                                       engine     target
=============================================  =========  ==========================
``audit.db``, ``/var/lib/aegis/audit.db``      sqlite     the path
``sqlite:///audit.db``, ``sqlite:////abs.db``  sqlite     ``audit.db``, ``/abs.db``
``:memory:``, ``sqlite:///``                   sqlite     ``:memory:``
``postgresql://...``, ``postgres://...``       postgres   the DSN
``host=db user=aegis password=...``            postgres   the DSN (libpq keywords)
``memory://``                                  memory     nothing is kept
=============================================  =========  ==========================

Anything else that looks like a URL (``mysql://``, ``file:``) is refused,
never taken for a file name; so is a ``key=value`` string whose keys are
not libpq's. A DSN's password (and ``sslpassword``, the client key's passphrase) never
reaches a message: :attr:`StoreURL.where`
masks it, and :meth:`StoreURL.scrub` removes it, as written and as decoded,
from any text (a driver's error may quote either, e.g. for an invalid
percent-escape such as ``%zz``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal
from urllib.parse import unquote

from aegis.errors import ConfigurationError

__all__ = ["Engine", "StoreURL", "is_postgres_url", "mask_dsn", "parse_store_url", "sqlite_path"]

#: the engines a location can name
Engine = Literal["memory", "sqlite", "postgres"]

_FORMS: Final = (
    "use a file path, sqlite:///path, postgresql://user@host/db, a libpq string "
    "('host=... dbname=...') or memory://"
)
_SCHEME: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_POSTGRES_SCHEMES: Final = frozenset({"postgresql", "postgres"})
# one key=value pair of a libpq connection string: a value is quoted, or runs to a space
_PAIR: Final = re.compile(r"\s*([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|(?:[^\s'\\]|\\.)*)")
_KEYWORDS_START: Final = re.compile(r"^\s*[A-Za-z_]+\s*=")
#: the libpq parameters that hold a secret: the password, and the client key's passphrase
_SECRET_KEYS: Final = frozenset({"password", "sslpassword"})
# one key=value pair of a URL's query (libpq decodes the key as well as the value)
_QUERY_PAIR: Final = re.compile(r"(^|&)([^&=]*)=([^&]*)")
#: the parameter keywords libpq knows (PostgreSQL 15's list)
_LIBPQ_KEYWORDS: Final = frozenset(
    {
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "channel_binding",
        "connect_timeout",
        "client_encoding",
        "options",
        "application_name",
        "fallback_application_name",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "replication",
        "gssencmode",
        "sslmode",
        "requiressl",
        "sslcompression",
        "sslcert",
        "sslkey",
        "sslpassword",
        "sslrootcert",
        "sslcrl",
        "sslcrldir",
        "sslsni",
        "requirepeer",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "krbsrvname",
        "gsslib",
        "service",
        "target_session_attrs",
        "load_balance_hosts",
    }
)


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A store location, parsed: which engine, what to open, and how to name it in messages.

    Attributes:
        engine: ``"memory"``, ``"sqlite"`` or ``"postgres"``.
        target: what the engine opens: a SQLite path (``":memory:"``
            included), a PostgreSQL DSN, or ``"memory://"``.
        where: the location for messages and logs (a DSN's password masked).
    """

    engine: Engine
    target: str = field(repr=False)
    where: str
    #: the DSN's password, as written and as decoded, for :meth:`scrub`
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def scrub(self, text: str) -> str:
        """``text`` with the whole DSN replaced by :attr:`where`, and any password by ``***``."""
        if self.target and self.target != self.where and self.target in text:
            text = text.replace(self.target, self.where)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def parse_store_url(url: object) -> StoreURL:
    """Which engine ``url`` names, and what it opens (see the module docstring for the forms).

    Raises:
        ConfigurationError: ``url`` is no path or string, names a scheme Aegis
            has no engine for, or is a malformed ``sqlite:`` URL or libpq string.
    """
    if isinstance(url, StoreURL):
        return url
    if isinstance(url, Path):
        return StoreURL("sqlite", str(url), str(url))
    if not isinstance(url, str):
        raise ConfigurationError(
            f"a store location is a path or a URL, not {type(url).__name__}; {_FORMS}"
        )
    if not url.strip():
        raise ConfigurationError(f"the store location is empty; {_FORMS}")
    scheme = _SCHEME.match(url)
    if scheme is not None and len(scheme.group(1)) > 1:  # "C:" is a Windows drive
        return _parse_scheme(url, scheme.group(1).lower())
    if _KEYWORDS_START.match(url):
        return _parse_keywords(url)
    return StoreURL("sqlite", url, url)


def _parse_scheme(url: str, scheme: str) -> StoreURL:
    if scheme in _POSTGRES_SCHEMES:
        if not url[len(scheme) + 1 :].startswith("//"):
            raise ConfigurationError(f"{mask_dsn(url)!r} is not a PostgreSQL URL; {_FORMS}")
        _check_credentials_end(url, len(scheme) + 3)
        return StoreURL("postgres", url, mask_dsn(url), _url_secrets(url))
    if scheme == "sqlite":
        path = sqlite_path(url)
        return StoreURL("sqlite", path, path)
    if scheme == "memory":
        if url.lower() != "memory://":
            raise ConfigurationError(f"{url!r}: the memory store takes no path; write memory://")
        return StoreURL("memory", "memory://", "memory://")
    masked = mask_dsn(url)
    file_hint = "" if "//" in url else f" (for a file of that name, write sqlite:///{masked})"
    raise ConfigurationError(
        f"{masked!r} names a {scheme}: store, which Aegis does not have; {_FORMS}{file_hint}"
    )


def _parse_keywords(url: str) -> StoreURL:
    pairs: list[tuple[str, str]] = []
    at = 0
    while at < len(url.rstrip()):
        found = _PAIR.match(url, at)
        if found is None or found.end() == at:
            break
        pairs.append((found.group(1), found.group(2)))
        at = found.end()
    unknown = sorted({key for key, _ in pairs if key.lower() not in _LIBPQ_KEYWORDS})
    if at < len(url.rstrip()) or unknown or not pairs:
        # Not echoed: a misspelt key would leave its password unmasked.
        what = (
            f"{', '.join(map(repr, unknown))} is no libpq keyword"
            if unknown
            else "it is not a list of key=value pairs"
        )
        raise ConfigurationError(
            f"the store location is not a valid PostgreSQL DSN: {what}; write "
            "'host=... dbname=... user=...', or sqlite:///PATH for a file with '=' in its name"
        )
    secrets: list[str] = []
    for key, value in pairs:
        if key.lower() in _SECRET_KEYS and value:
            unquoted = value[1:-1] if value.startswith("'") and value.endswith("'") else value
            secrets.extend((value, unquoted, re.sub(r"\\(.)", r"\1", unquoted)))
    return StoreURL("postgres", url, mask_dsn(url), _distinct(secrets))


def _credentials_end(url: str, start: int) -> int:
    """Where the user name and password of a URL end (the '@' after them); -1: none given.

    The last '@' before the path's query: where libpq ends them in a URL that
    :func:`_check_credentials_end` accepts (a '?' or '#' in a password is part
    of it, not a query or fragment), and past every '@' of one it refuses,
    so that what an unencoded '@' or '/' splits off stays hidden as well.
    """
    slash = url.find("/", start)
    query = url.find("?", slash) if slash >= 0 else -1
    return url.rfind("@", start, len(url) if query < 0 else query)


def _check_credentials_end(url: str, start: int) -> None:
    """Refuse a URL whose '@' libpq would take for another one than the writer meant.

    An '@' or '/' left unencoded in a password moves where libpq thinks the
    host starts, and parts of the password would land in its error (as a
    host name) unmasked.
    """
    slash = url.find("/", start)
    authority = url[start:] if slash < 0 else url[start:slash]
    path = "" if slash < 0 else url[slash:].split("?", 1)[0]
    if authority.count("@") > 1 or "@" in path:
        raise ConfigurationError(
            f"{mask_dsn(url)}: the user name or password holds an '@' or '/' as it is, "
            "which libpq would read as the end of the password; percent-encode them "
            "(%40, %2F), e.g. with urllib.parse.quote(password, safe=''), or give the "
            "password in PGPASSWORD or a passfile (~/.pgpass)"
        )


def _query_start(url: str, start: int) -> int:
    """Where the query of a URL starts (after its '?'), or -1 without one."""
    end = _credentials_end(url, start)
    mark = url.find("?", start if end < 0 else end)
    return -1 if mark < 0 else mark + 1


def _url_secrets(url: str) -> tuple[str, ...]:
    """The password of a ``postgresql://`` URL as written and as decoded, longest first."""
    start = url.index("//") + 2
    found: list[str] = []
    end = _credentials_end(url, start)
    if end >= 0 and ":" in url[start:end]:
        found.append(url[start:end].split(":", 1)[1])
    query = _query_start(url, start)
    if query >= 0:
        found.extend(
            match.group(3)
            for match in _QUERY_PAIR.finditer(url[query:])
            if _is_secret_key(match.group(2))
        )
    return _distinct([form for raw in found for form in (raw, unquote(raw))])


def _is_secret_key(key: str) -> bool:
    """Whether a URL query's ``key`` (as written: ``pass%77ord`` too) names a secret."""
    return unquote(key).strip().lower() in _SECRET_KEYS


def _mask_query(query: str) -> str:
    """A URL's query with the value of every secret parameter replaced by ``***``."""
    return _QUERY_PAIR.sub(
        lambda m: f"{m.group(1)}{m.group(2)}=***" if _is_secret_key(m.group(2)) else m.group(0),
        query,
    )


def _distinct(secrets: list[str]) -> tuple[str, ...]:
    # Longest first, so that a password containing another is replaced whole.
    return tuple(sorted({s for s in secrets if s}, key=len, reverse=True))


def mask_dsn(dsn: str) -> str:
    """``dsn`` with its password replaced by ``***``, for messages and logs.

    Example::

        >>> mask_dsn("postgresql://app:s3cret@db.internal/aegis")
        'postgresql://app:***@db.internal/aegis'
    """
    scheme = _SCHEME.match(dsn)
    if scheme is not None and dsn[scheme.end() :].startswith("//"):
        start = scheme.end() + 2
        query = _query_start(dsn, start)
        if query >= 0:
            dsn = dsn[:query] + _mask_query(dsn[query:])
        end = _credentials_end(dsn, start)
        colon = dsn.find(":", start, end) if end >= start else -1
        return dsn if colon < 0 else f"{dsn[: colon + 1]}***{dsn[end:]}"
    if scheme is not None and "@" in dsn:
        # A URL missing its '//' (postgres:pw@host/db, postgresql:/app:pw@db): all
        # between the colon before the password and the last '@' is masked.
        head, at, tail = dsn.rpartition("@")
        colon = scheme.end() - 1
        if head[colon + 1 : colon + 2] == "/":
            colon = head.find(":", colon + 1)
        return dsn if colon < 0 else f"{head[: colon + 1]}***{at}{tail}"
    return re.sub(
        r"(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|(?:[^\s'\\]|\\.)+)",
        r"\1***",
        dsn,
        flags=re.I,
    )


def is_postgres_url(url: object) -> bool:
    """Whether ``url`` names a PostgreSQL database (a URL or a libpq string)."""
    try:
        return parse_store_url(url).engine == "postgres"
    except ConfigurationError:
        return False


def sqlite_path(url: str | Path) -> str:
    """The file path of a SQLite URL or plain path (``sqlite:///a.db`` is ``a.db``).

    Raises:
        ConfigurationError: a ``sqlite:`` URL without the three slashes.
    """
    text = str(url)
    if text.lower().startswith("sqlite:"):
        rest = text[len("sqlite:") :]
        if not rest.startswith("///"):
            raise ConfigurationError(
                f"{text!r} is not a SQLite URL; write sqlite:///relative.db or "
                "sqlite:////absolute/path.db (or just the path)"
            )
        return rest[3:] or ":memory:"
    return text
