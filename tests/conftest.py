"""Shared fixtures: a database per test over SQLite and PostgreSQL, real data, cheap trainers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
PG_ADMIN_URL = os.environ.get(
    "KALLOS_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)


def _pg_available() -> bool:
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


_PG = None


def pg_available() -> bool:
    global _PG
    if _PG is None:
        _PG = _pg_available()
    return _PG


def _require_pg() -> None:
    if pg_available():
        return
    # In CI PostgreSQL is part of the contract: fail, never skip.
    if os.environ.get("CI") or os.environ.get("KALLOS_REQUIRE_PG"):
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (required in CI)")
    pytest.skip("PostgreSQL not reachable; set KALLOS_TEST_PG_URL or start the server")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped after the test."""
    import sqlalchemy as sa

    _require_pg()
    name = f"kallos_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{(tmp_path / 'kallos.db').as_posix()}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test over the embedded SQLite default and a real PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{(tmp_path / 'kallos.db').as_posix()}"
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or skip when it is absent (outside this project's CI)."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED_DATA} is missing; CI runs with ../shared beside the clone")
        pytest.skip("../shared/data not present")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's KALLOS_* / POSTGRES_* / MLFLOW_* variables or ./config.json."""
    for key in list(os.environ):
        if key.startswith(("KALLOS_", "POSTGRES_", "MLFLOW_")) and key != "KALLOS_TEST_PG_URL":
            monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _cpu_trainer(_isolated_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test trains on the CPU unless it passes another accelerator itself (a flag or a
    settings value outranks the environment). Set after the isolation cleared KALLOS_*."""
    monkeypatch.setenv("KALLOS_ACCELERATOR", "cpu")
