"""Database URLs: resolution (URL text, the seed's ``db_kwargs``), and the one password scrubber.

Below every layer, so the settings resolver, the data layer, Optuna's storage and MLflow's
tracking URI all show and hide passwords the same way. Imports SQLAlchemy's URL type only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from sqlalchemy.engine import URL, make_url

from kallos_models.errors import ConfigError

__all__ = ["mask_url", "resolve_url", "scrub", "url_from_db_kwargs"]


def mask_url(url: str | URL) -> str:
    """Return ``url`` as text with any password replaced by ``***``.

    Text URLs are split at the last ``@``, so a password holding an unescaped ``@`` is still
    hidden whole.
    """
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    parts = _split_credentials(str(url))
    if parts is None:
        return str(url)
    scheme, user, _, host = parts
    return f"{scheme}://{user}:***@{host}"


def _split_credentials(text: str) -> tuple[str, str, str, str] | None:
    """``scheme, user, password, host`` of a text URL with a password, split at the last
    ``@`` (so a password holding an unescaped ``@`` stays whole); None without a password."""
    if "://" not in text or "@" not in text:
        return None
    scheme, rest = text.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    if ":" not in credentials:
        return None
    user, password = credentials.split(":", 1)
    return scheme, user, password, host


def _password_of(url: str | URL) -> str | None:
    if isinstance(url, URL):
        return url.password
    parts = _split_credentials(str(url))
    return None if parts is None else parts[2]


def scrub(text: str, url: str | URL) -> str:
    """``text`` (an error message) with the password of ``url`` replaced by ``***``.

    The one password scrubber for database, Optuna storage and MLflow messages alike; the
    password is found the way :func:`mask_url` finds it (a password holding an unescaped
    ``@`` is hidden whole).
    """
    password = _password_of(url)
    if password:
        text = text.replace(password, "***")
        encoded = quote(password, safe="")
        if encoded != password:
            text = text.replace(encoded, "***")
    return text


def url_from_db_kwargs(db_kwargs: Mapping[str, Any]) -> URL:
    """Build a PostgreSQL URL from the seed's ``db_kwargs`` dict.

    Parameters
    ----------
    db_kwargs
        ``postgres_user``, ``postgres_password``, ``postgres_host``, ``postgres_port``,
        ``postgres_db``; host defaults to localhost, port to 5432.
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
    return URL.create(
        "postgresql+psycopg2",
        username=str(db_kwargs["postgres_user"]),
        password=str(db_kwargs["postgres_password"])
        if db_kwargs.get("postgres_password")
        else None,
        host=str(db_kwargs.get("postgres_host") or "localhost"),
        port=port,
        database=str(db_kwargs["postgres_db"]),
    )


def resolve_url(db: str | URL | Mapping[str, Any]) -> URL:
    """Turn a URL string, a URL or a ``db_kwargs`` dict into a SQLAlchemy URL."""
    if isinstance(db, URL):
        return db
    if isinstance(db, Mapping):
        return url_from_db_kwargs(db)
    try:
        url = make_url(db)
    except Exception as exc:
        raise ConfigError(
            f"database URL {mask_url(db)!r} is not valid; write it like "
            "sqlite:///kallos.db or postgresql://user:password@host:5432/dbname"
        ) from exc
    if url.drivername in ("postgres", "postgresql"):
        # Plain postgresql:// means the driver this package installs (SQLAlchemy 2.1 would
        # otherwise pick psycopg 3); postgres:// is the Heroku-style alias.
        url = url.set(drivername="postgresql+psycopg2")
    return url
