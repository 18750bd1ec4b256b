"""kylon/ratelimits.py with a clock the tests set: two RateLimits on one store
stand for two Kylon processes (the database on SQLite and MariaDB, or a
Redis server started here), window resets at the minute's end, the token
hold and its reconciliation, concurrency published across processes, and
what happens when a store is away."""

import asyncio
import os
import shutil
import signal
import subprocess
import time
from decimal import Decimal

import httpx
import openai
import pytest

from prometheus_client import REGISTRY

from kylon.auth import AgentEntry, KeyEntry
from kylon.controls import Limits
from kylon.db import DatabaseWorker
from kylon.models import open_database
from kylon.ratelimits import DatabaseStore, RateLimits, RateRefusal, RedisStore, Ticket, format_reset

from .conftest import drop_database, scratch_database_url
from .fakes.server import free_port
from .test_openai_e2e import MESSAGES

START = 29_000_000 * 60.0  # the start of a minute


class Clock:
    def __init__(self, at=START + 10):
        self.now = at

    def __call__(self):
        return self.now


def key_and_agent(key_limits=Limits(), agent_limits=Limits(), key_id=1, agent_id=1):
    return (KeyEntry(key_id, agent_id, None, False, key_limits), AgentEntry(agent_id, "a", frozenset(), Decimal(0),
                                                                            agent_limits))


@pytest.fixture(params=["sqlite", "mariadb"])
def store(request, tmp_path_factory):
    url = scratch_database_url(request.param, tmp_path_factory)
    worker = DatabaseWorker(open_database(url))
    yield DatabaseStore(worker)
    worker.close()
    drop_database(url)


def sample(name):
    return REGISTRY.get_sample_value(name) or 0


def admitted(results):
    return sum(isinstance(r, Ticket) for r in results)


def test_two_processes_share_one_minute_of_requests_then_it_resets(store):
    clock = Clock()
    a, b = RateLimits(store, "a", clock=clock), RateLimits(store, "b", clock=clock)
    key, agent = key_and_agent(Limits(rpm=10))

    async def burst(n):
        # Both processes at once, as under load.
        return await asyncio.gather(*((a if i % 2 else b).admit(key, agent) for i in range(n)))

    results = asyncio.run(burst(30))
    assert admitted(results) == 10
    refused = [r for r in results if isinstance(r, RateRefusal)]
    assert len(refused) == 20 and refused[0].status == 429
    assert "requests per minute (rpm_limit 10): 10 of 10 used this minute; it resets in 50s" in refused[0].message
    assert refused[0].headers["Retry-After"] == "50" and refused[0].headers["x-ratelimit-reset-requests"] == "50s"
    clock.now = START + 59.5
    assert a.admit_now(key, agent).headers["Retry-After"] == "1"
    clock.now = START + 60  # the next minute: a fresh ten
    results = asyncio.run(burst(30))
    assert admitted(results) == 10
    status = a.status(key, agent)
    assert status["key"]["rpm"] == {"limit": 10, "remaining": 0, "resets_in_seconds": 60,
                                    "resets_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(START + 120))}
    assert status["agent"] == {"rpm": None, "tpm": None, "concurrency": None}


def test_a_limit_raised_within_the_minute_applies_to_the_next_call(store):
    limits = RateLimits(store, "a", clock=Clock())
    key, agent = key_and_agent(Limits(rpm=2))

    async def run(n):
        return [await limits.admit(key, agent) for _ in range(n)]

    assert admitted(asyncio.run(run(3))) == 2
    key.limits = Limits(rpm=4)
    assert admitted(asyncio.run(run(3))) == 2
    key.limits = Limits(rpm=1)  # lowered: what is already used counts
    assert admitted(asyncio.run(run(1))) == 0


def test_leases_leave_at_most_a_block_unused_per_process(store):
    """rpm 100: leases of 5. One process spends 3 of its lease, the other
    still gets the rest: 97 + 3 = 100 admitted, none beyond."""
    clock = Clock()
    a, b = RateLimits(store, "a", clock=clock), RateLimits(store, "b", clock=clock)
    key, agent = key_and_agent(Limits(rpm=100))

    async def run():
        first = [await a.admit(key, agent) for _ in range(3)]
        second = [await b.admit(key, agent) for _ in range(120)]
        return first, second

    first, second = asyncio.run(run())
    assert admitted(first) == 3 and admitted(second) == 95  # a holds 2 of its lease of 5 unspent


def test_the_token_hold_counts_until_the_usage_replaces_it(store):
    clock = Clock()
    limits = RateLimits(store, "a", clock=clock)
    key, agent = key_and_agent(agent_limits=Limits(tpm=1000))

    async def run():
        first = await limits.admit(key, agent)
        assert await limits.hold(first, 700) is None
        second = await limits.admit(key, agent)
        refusal = await limits.hold(second, 400)  # 700 held, 300 left
        assert "tokens per minute (tpm_limit 1000): 700 of 1000 used or held this minute; this call may use " \
               "up to 400" in refusal.message
        limits.end(second, 0)
        limits.end(first, 100)  # it used 100 of its 700
        third = await limits.admit(key, agent)
        assert await limits.hold(third, 800) is None
        assert limits.status(key, agent)["agent"]["tpm"]["remaining"] == 100
        clock.now = START + 61  # the third runs into the next minute; its end changes nothing there
        limits.end(third, 5000)
        fourth = await limits.admit(key, agent)
        assert await limits.hold(fourth, 1000) is None  # the whole minute
        assert isinstance(await limits.admit(key, agent), RateRefusal)  # nothing left to start on
        limits.end(fourth, 0)
        too_big = await limits.admit(key, agent)
        return await limits.hold(too_big, 1001)

    refusal = asyncio.run(run())
    assert "may use up to 1001 tokens" in refusal.message and "more than this agent's tokens per minute" in refusal.message


def test_concurrency_is_published_across_processes(store):
    clock = Clock()
    a, b = RateLimits(store, "a", clock=clock), RateLimits(store, "b", clock=clock)
    key, agent = key_and_agent(Limits(concurrency=3))

    async def run():
        running = [a.admit_now(key, agent) for _ in range(2)]
        assert b.admit_now(key, agent).__class__ is Ticket  # b has not seen a's yet (the stated bound)
        await a.refresh()
        await b.refresh()
        refusal = b.admit_now(key, agent)
        assert isinstance(refusal, RateRefusal) and "(concurrency_limit 3): 3 running" in refusal.message
        assert refusal.headers["Retry-After"] == "1"
        for ticket in running:
            a.end(ticket, 0)
        await a.stop()  # withdraws its counts at once
        await b.refresh()
        return b.admit_now(key, agent)

    assert isinstance(asyncio.run(run()), Ticket)


def test_a_failing_store_leaves_each_process_counting_alone(tmp_path):
    worker = DatabaseWorker(open_database("sqlite:///" + str(tmp_path / "k.db")))
    store = DatabaseStore(worker)
    worker.close()  # every claim now fails
    limits = RateLimits(store, "a", clock=Clock())
    key, agent = key_and_agent(Limits(rpm=5))
    failures = sample("kylon_ratelimit_store_failures_total")

    async def run():
        return [await limits.admit(key, agent) for _ in range(8)]

    assert admitted(asyncio.run(run())) == 5
    assert sample("kylon_ratelimit_store_failures_total") > failures


def test_reset_format():
    assert [format_reset(s) for s in (1, 6, 59, 60)] == ["1s", "6s", "59s", "1m0s"]


# -- Redis -----------------------------------------------------------------------


class RedisServer:
    def __init__(self, directory, port=None):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                import socket

                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.kill()


def test_redis_counts_for_all_processes_and_the_database_serves_when_it_is_away(redis_server, tmp_path):
    worker = DatabaseWorker(open_database("sqlite:///" + str(tmp_path / "k.db")))
    clock = Clock()
    key, agent = key_and_agent(Limits(rpm=6, concurrency=100))
    fallbacks = sample("kylon_ratelimit_store_fallbacks_total")

    async def run():
        a = RateLimits(RedisStore(redis_server.url, DatabaseStore(worker)), "a", clock=clock)
        b = RateLimits(RedisStore(redis_server.url, DatabaseStore(worker)), "b", clock=clock)
        first = await asyncio.gather(*((a if i % 2 else b).admit(key, agent) for i in range(20)))
        await a.refresh()
        await b.refresh()
        seen_by_b = b.status(key, agent)["key"]["concurrency"]["running"]
        redis_server.kill()
        clock.now = START + 60
        second = await asyncio.gather(*((a if i % 2 else b).admit(key, agent) for i in range(20)))
        await a.stop()
        await b.stop()
        return first, seen_by_b, second

    try:
        first, seen_by_b, second = asyncio.run(run())
    finally:
        worker.close()
    assert admitted(first) == 6 and seen_by_b == 6  # 3 running in a, 3 in b
    # Redis away: the database grants the next minute's six, to both processes together.
    assert admitted(second) == 6
    assert sample("kylon_ratelimit_store_fallbacks_total") > fallbacks


# -- Kylon processes ----------------------------------------------------------------


def test_kylon_serves_and_limits_when_redis_is_away(make_kylon):
    from .test_ratelimits import avoid_minute_boundary, counter, limited_key, metrics_text

    k = make_kylon({"KYLON_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})  # nothing listens there
    agent, key = limited_key(k, rpm_limit=2)
    avoid_minute_boundary()
    client = openai.OpenAI(base_url=k.url + "/proxy/openai/v1", api_key=key["key"], max_retries=0)
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    text = metrics_text(k)
    assert counter(text, "kylon_ratelimit_store_fallbacks_total") >= 1
    assert counter(text, "kylon_ratelimit_claims_total", store="database") >= 1
    assert "Redis away" in k.read_log()


def test_kylon_counts_in_redis(make_kylon, redis_server):
    from .test_ratelimits import avoid_minute_boundary, counter, limited_key, metrics_text

    k = make_kylon({"KYLON_REDIS_URL": redis_server.url})
    agent, key = limited_key(k, rpm_limit=2)
    avoid_minute_boundary()
    statuses = [httpx.post(k.url + "/proxy/openai/v1/chat/completions", timeout=10,
                           headers={"Authorization": f"Bearer {key['key']}"},
                           json={"model": "gpt-4o-mini", "messages": MESSAGES}).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    text = metrics_text(k)
    assert counter(text, "kylon_ratelimit_claims_total", store="redis") >= 1
    assert counter(text, "kylon_ratelimit_store_fallbacks_total") == 0
    keys = subprocess.run(["redis-cli", "-p", str(redis_server.port), "--scan", "--pattern", "kylon:ratelimit:*"],
                          capture_output=True, text=True).stdout.split()
    assert any(name.startswith(f"kylon:ratelimit:key:{key['id']}:") for name in keys)
