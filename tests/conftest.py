"""Shared fixtures: real PostgreSQL and Redis, each test run in its own database / key prefix.

Locally a missing server skips the tests that need it; with ``CI=true`` it is a failure.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT / "data"  # the real history the demo and README use (data/README.md)
FIXTURES = REPO_ROOT / "tests" / "fixtures"  # real captures the tests use (tests/fixtures/README.md)
PG_ADMIN_URL = os.environ.get("RTML_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("RTML_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("RTML_TEST_NATS_URL", "nats://127.0.0.1:4222")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(what: str, error: Exception) -> None:
    message = f"{what} is not reachable: {error}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing server is a failure, never a skip)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A throwaway PostgreSQL database for this test session, dropped at the end."""
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"rtml_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # noqa: BLE001 - reported as skip/fail below
        admin.dispose()
        _unavailable("PostgreSQL", error)
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> str:
    """A PostgreSQL database of its own for one test (for schema/migration tests)."""
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"rtml_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield admin.url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'offline.sqlite'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def offline_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each offline-store test runs on the embedded SQLite file and on real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'offline.sqlite'}"
    return request.getfixturevalue("fresh_postgres_url")


@pytest.fixture
def redis_url() -> str:
    """Real Redis; the test's keys live under ``redis_prefix`` and are deleted afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except Exception as error:  # noqa: BLE001
        _unavailable("Redis", error)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> str:
    import redis

    prefix = f"rtmltest:{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def online_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(url, key prefix): each online-store test runs on embedded SQLite and on real Redis."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'online.sqlite'}", "rtml"
    return request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")


@pytest.fixture
def nats_url() -> str:
    """Real NATS with JetStream; each broker test names its own stream and deletes it afterwards."""
    import asyncio

    import nats

    async def probe() -> None:
        nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False)
        try:
            await nc.jetstream().account_info()
        finally:
            await nc.close()

    try:
        asyncio.run(probe())
    except Exception as error:  # noqa: BLE001
        _unavailable("NATS JetStream", error)
    return NATS_URL
