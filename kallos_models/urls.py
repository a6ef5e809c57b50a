"""Database URLs: resolution (URL text, the seed's ``db_kwargs``), and the one password scrubber.

Below every layer, so the settings resolver, the data layer, Optuna's storage and MLflow's
tracking URI all show and hide passwords the same way. Imports SQLAlchemy's URL type only.

Text URLs are read conservatively. Everything between ``://`` and the *last* ``@`` is taken
as credentials: a password holding an unescaped ``@`` (which SQLAlchemy would split at its
first ``@``) is hidden whole, and :func:`resolve_url` refuses such a URL rather than connect
to a host made of pieces of the password. Text that cannot be read at all is shown as
``<unparseable URL, masked>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from sqlalchemy.engine import URL, make_url

from kallos_models.errors import ConfigError

__all__ = [
    "UNPARSEABLE",
    "mask_url",
    "resolve_url",
    "scrub",
    "sqlite_file",
    "url_from_db_kwargs",
]

#: What :func:`mask_url` shows for text that cannot be read as a URL.
UNPARSEABLE = "<unparseable URL, masked>"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
#: Query parameters whose values are secrets (``?password=...``, ``sslpassword``, tokens).
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|auth|credential", re.IGNORECASE)
#: Where SQLAlchemy or a driver may cut a mis-read password into pieces.
_SEPARATORS = re.compile(r"[@:/?#&=;,\s]")
_ENCODE_HINT = (
    "percent-encode those characters in the user name and password (@ as %40, : as %3A, "
    "/ as %2F, ? as %3F, # as %23, % as %25), e.g. postgresql://user:p%40ss@host:5432/dbname"
)


@dataclass(frozen=True)
class _Parts:
    """A text URL as :func:`mask_url` reads it."""

    scheme: str | None
    user: str | None  # shown
    secret: str | None  # hidden: the password, or the whole credentials when ambiguous
    tail: str | None  # shown (query secrets masked); None: nothing more may be shown
    ambiguous: bool  # credentials SQLAlchemy may split elsewhere (unreadable text: False)


def _parse_text(text: str) -> _Parts:
    if "://" not in text:
        if "@" not in text and ":" not in text:  # a bare word or a path: no credentials
            return _Parts(None, None, None, text, False)
        known = re.match(r"([A-Za-z][A-Za-z0-9+.\-]*):/", text)
        return _Parts(known.group(1) if known else None, None, text, None, False)
    scheme, rest = text.split("://", 1)
    if not _SCHEME.fullmatch(scheme):
        return _Parts(None, None, text, None, False)
    if rest.startswith("/") or "@" not in rest:  # no authority, or none with credentials
        return _Parts(scheme, None, None, rest, False)
    region, tail = rest.rsplit("@", 1)
    user, colon, password = region.partition(":")
    ambiguous = "@" in region or any(c in region for c in "/?#")
    if "@" in user or any(c in user for c in "/?#"):
        user, password, colon = "", region, ":"  # cannot tell the user name: hide it all
    # A '?' before the last '@' may mean that '@' sits in a query value: hide what follows.
    shown_tail = None if ("?" in region or "#" in region) else tail
    return _Parts(scheme, user or None, password if colon else None, shown_tail, ambiguous)


def _mask_query(tail: str) -> str:
    path, question, query = tail.partition("?")
    if not question:
        return tail
    params = []
    for param in query.split("&"):
        key, equals, _ = param.partition("=")
        params.append(f"{key}=***" if equals and _SECRET_PARAM.search(unquote(key)) else param)
    return f"{path}?{'&'.join(params)}"


def mask_url(url: str | URL) -> str:
    """Return ``url`` as text with its password, and secret query values, as ``***``.

    Parameters
    ----------
    url : str or URL
        A SQLAlchemy URL, or any text given as a database, storage or tracking URI.

    Returns
    -------
    str
        ``postgresql://u:***@h/db``. A text password holding an unescaped ``@`` is hidden
        whole (everything between ``://`` and the last ``@``); text that cannot be read as
        a URL but might hold credentials is ``<unparseable URL, masked>`` (plus its scheme,
        in brackets, when it starts with one); a bare word or path is returned as is.
    """
    if isinstance(url, URL):
        shown = url.set(query={}).render_as_string(hide_password=True)
        if not url.query:
            return shown
        params = []
        for key, value in url.query.items():
            for item in (value,) if isinstance(value, str) else value:
                secret = _SECRET_PARAM.search(key)
                params.append(f"{quote_plus(key)}={'***' if secret else quote_plus(item)}")
        return f"{shown}?{'&'.join(params)}"
    parts = _parse_text(str(url))
    if parts.tail is None:
        return UNPARSEABLE + (f" ({parts.scheme})" if parts.scheme else "")
    tail = _mask_query(parts.tail)
    if parts.scheme is None:
        return tail
    if parts.user is None and parts.secret is None:
        return f"{parts.scheme}://{tail}"
    credentials = (parts.user or "***") + (":***" if parts.user and parts.secret else "")
    return f"{parts.scheme}://{credentials}@{tail}"


def _query_secrets(query: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in query.items():
        if _SECRET_PARAM.search(str(key)):
            out.extend([value] if isinstance(value, str) else list(value))
    return out


def _secrets(url: str | URL) -> tuple[set[str], set[str]]:
    """The forms of ``url``'s secrets to hide anywhere, and their pieces to hide as words."""
    values: list[str] = []
    if isinstance(url, URL):
        values += [url.password or "", *_query_secrets(url.query)]
    else:
        text = str(url)
        parts = _parse_text(text)
        values.append(parts.secret or "")
        for param in text.partition("?")[2].split("&"):
            key, _, value = param.partition("=")
            if _SECRET_PARAM.search(unquote(key)):
                values.append(value)
        try:  # what SQLAlchemy would hand the driver, mis-read or not
            parsed = make_url(text)
            values += [str(parsed.password or ""), *_query_secrets(parsed.query)]
        except Exception:
            pass
    whole: set[str] = set()
    pieces: set[str] = set()
    for value in filter(None, values):
        plain = unquote(value)
        whole |= {value, plain, unquote_plus(value), quote(plain, safe=""), quote_plus(plain)}
        whole.add(quote(plain, safe=" +"))  # SQLAlchemy's own rendering
        for form in (value, plain):
            pieces |= {p for p in _SEPARATORS.split(form) if p.strip("*")}
    return {w for w in whole if w.strip("*")}, pieces


def scrub(text: str, url: str | URL) -> str:
    """``text`` (an error message) with every trace of ``url``'s password as ``***``.

    The one password scrubber for database, Optuna storage and MLflow messages alike.

    Parameters
    ----------
    text : str
        A message, e.g. a driver's error.
    url : str or URL
        The URL whose secrets are hidden: its password and secret query values, in the
        form written, URL-decoded and URL-encoded, anywhere in ``text``; and each piece of
        them between ``@ : / ? # & =`` (the fragments a driver prints as a host name or
        port when a URL was split at the wrong ``@``) wherever it stands as a word.
    """
    whole, pieces = _secrets(url)
    for secret in sorted(whole, key=len, reverse=True):
        text = text.replace(secret, "***")
    for piece in sorted(pieces - whole, key=len, reverse=True):
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(piece)}(?![A-Za-z0-9])", "***", text)
    return text


def sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL (``file:`` URIs too); None for memory or another backend."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    name = str(url.database)
    if name.startswith("file:"):
        name = name[len("file:") :].split("?", 1)[0]
    return Path(name)


def url_from_db_kwargs(db_kwargs: Mapping[str, Any]) -> URL:
    """Build a PostgreSQL URL from the seed's ``db_kwargs`` dict.

    Parameters
    ----------
    db_kwargs
        ``postgres_user``, ``postgres_password``, ``postgres_host``, ``postgres_port``,
        ``postgres_db``; host defaults to localhost, port to 5432.

    Raises
    ------
    ConfigError
        A required key is missing, the port is not a number, or the host is a URL.
    """
    missing = [k for k in ("postgres_user", "postgres_db") if not db_kwargs.get(k)]
    if missing:
        raise ConfigError(
            f"db_kwargs lacks {', '.join(missing)}; give postgres_user, postgres_password, "
            "postgres_host, postgres_port and postgres_db, or a --db-url"
        )
    try:
        port = int(db_kwargs.get("postgres_port") or 5432)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"postgres_port {db_kwargs.get('postgres_port')!r} is not a number"
        ) from exc
    host = str(db_kwargs.get("postgres_host") or "localhost")
    if "@" in host or "://" in host:  # a whole URL, maybe with a password, given as the host
        raise ConfigError(
            f"postgres_host {mask_url(host)!r} is a URL, not a host name; give the host "
            "alone (e.g. 127.0.0.1), or pass the whole URL as --db-url (KALLOS_DB_URL)"
        )
    return URL.create(
        "postgresql+psycopg2",
        username=str(db_kwargs["postgres_user"]),
        password=str(db_kwargs["postgres_password"])
        if db_kwargs.get("postgres_password")
        else None,
        host=host,
        port=port,
        database=str(db_kwargs["postgres_db"]),
    )


def resolve_url(db: str | URL | Mapping[str, Any]) -> URL:
    """Turn a URL string, a URL or a ``db_kwargs`` dict into a SQLAlchemy URL.

    Raises
    ------
    ConfigError
        The text is not a URL, or it cannot be read unambiguously: more than one ``@``, or
        ``/ ? #`` in the part before its ``@`` (SQLAlchemy would split it at the wrong
        place). The message shows the URL masked and says how to percent-encode it.
    """
    if isinstance(db, URL):
        return db
    if isinstance(db, Mapping):
        return url_from_db_kwargs(db)
    text = str(db)
    parts = _parse_text(text)
    if parts.ambiguous:
        raise ConfigError(
            f"database URL {mask_url(text)!r} cannot be read unambiguously: the part "
            "before its last '@' holds '@', '/', '?' or '#'; " + _ENCODE_HINT
        )
    try:
        url = make_url(text)
    except Exception:
        raise ConfigError(
            f"database URL {mask_url(text)!r} is not valid; write it like "
            "sqlite:///kallos.db or postgresql://user:password@host:5432/dbname"
        ) from None  # the parser's own message may quote pieces of the password
    if url.drivername in ("postgres", "postgresql"):
        # Plain postgresql:// means the driver this package installs (SQLAlchemy 2.1 would
        # otherwise pick psycopg 3); postgres:// is the Heroku-style alias.
        url = url.set(drivername="postgresql+psycopg2")
    return url
