"""Shared fixtures: fake upstreams, and Kylon processes on SQLite and MariaDB.

The MariaDB tests use the server at 127.0.0.1:3306 (user root, no password;
override with KYLON_TEST_MYSQL_URL) and a scratch database per test session.
"""

import os
import uuid

import pytest

from .fakes import start_all
from .kylon_process import Kylon

MYSQL_SERVER = os.environ.get("KYLON_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306")
# Every secret the suite creates (operator keys, agent keys).
CREATED_SECRETS = set()


def mysql_server_sql(server_url, statement):
    """Run one statement on the MySQL server of `mysql://user:pass@host:port`."""
    import pymysql

    userinfo, _, hostport = server_url.split("://", 1)[1].rpartition("@")
    user, _, password = userinfo.partition(":")
    host, _, port = hostport.partition(":")
    conn = pymysql.connect(host=host, port=int(port or 3306), user=user or "root", password=password)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def scratch_database_url(kind, tmp_path_factory):
    if kind == "sqlite":
        return "sqlite:///" + str(tmp_path_factory.mktemp("db") / "kylon.db")
    name = "kylon_test_" + uuid.uuid4().hex[:10]
    mysql_server_sql(MYSQL_SERVER, f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    return f"{MYSQL_SERVER}/{name}"


def drop_database(url):
    if url.startswith("mysql"):
        server, _, name = url.rpartition("/")
        mysql_server_sql(server, f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log():
    """After the whole suite: no agent key, admin token or operator credential
    the suite created appears in any Kylon log."""
    yield
    from . import kylon_process

    secrets = CREATED_SECRETS | kylon_process.CREATED_KEYS
    for path in sorted(kylon_process.LOG_PATHS):
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        leaked = sorted(s[:12] + "…" for s in secrets if s and s in text)
        assert not leaked, f"{path} contains secrets: {leaked}"


@pytest.fixture(scope="session")
def fakes():
    """Every fake upstream in tests/fakes (name -> fake), started once."""
    started = start_all()
    yield started
    for fake in started.values():
        fake.stop()


@pytest.fixture(scope="session")
def upstream_env(fakes):
    """Operator credentials and base URLs pointing Kylon at the fakes."""
    env = {}
    for fake in fakes.values():
        env.update(fake.kylon_env())
        CREATED_SECRETS.update(fake.secrets())
    return env


@pytest.fixture(scope="session")
def fake_openai(fakes):
    return fakes["openai"]


@pytest.fixture(scope="session", params=["sqlite", "mariadb"])
def kylon(request, tmp_path_factory, upstream_env):
    """A Kylon process per database kind; the tests using it run on both."""
    url = scratch_database_url(request.param, tmp_path_factory)
    instance = Kylon(url, {**upstream_env, "KYLON_MAX_BODY_BYTES": str(1024 * 1024)}, name=request.param)
    instance.db_kind = request.param
    yield instance
    instance.stop()
    drop_database(url)


@pytest.fixture
def make_kylon(tmp_path_factory, upstream_env):
    """Extra short-lived Kylon processes with their own settings (SQLite)."""
    started = []

    def start(env=None, database_url=None, inherit=True):
        url = database_url or scratch_database_url("sqlite", tmp_path_factory)
        instance = Kylon(url, {**(upstream_env if inherit else {}), **(env or {})}, name="extra")
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.stop()


@pytest.fixture
def agent_key(kylon):
    """A fresh agent with 100 credits and a key, on the session's Kylon."""
    agent, key = kylon.agent_with_key("100")
    CREATED_SECRETS.add(key)
    return agent, key
