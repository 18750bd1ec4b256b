"""Several Kylon processes on one MariaDB: exact debits, changes made on one
applying on the other within the cache refresh bound, and in-flight holds that
count across processes."""

import concurrent.futures
import time
from decimal import Decimal

import httpx
import openai
import pytest

from .conftest import drop_database, scratch_database_url
from .test_openai_e2e import GPT_4O_MINI_CALL, MESSAGES

# The test processes refresh their caches every 0.5 s; a change must show on
# the other process within this bound (refresh + one in-flight refresh + slack).
PROPAGATION_BOUND = 1.5


@pytest.fixture
def pair(tmp_path_factory, make_kylon):
    url = scratch_database_url("mariadb", tmp_path_factory)
    a = make_kylon(database_url=url)
    b = make_kylon(database_url=url)
    yield a, b
    a.stop()
    b.stop()
    drop_database(url)


def sdk(k, key):
    return openai.OpenAI(base_url=k.url + "/proxy/openai/v1", api_key=key, max_retries=0)


def call_status(k, key, model="gpt-4o-mini"):
    r = httpx.post(k.url + "/proxy/openai/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": model, "messages": MESSAGES}, timeout=10)
    return r.status_code


def time_until(predicate, limit=5.0):
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError("never happened")


def test_thousand_concurrent_calls_over_two_processes_debit_exactly(pair):
    a, b = pair
    agent, key = a.agent_with_key("1")
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    clients = [httpx.Client(base_url=k.url, limits=limits, timeout=30) for k in (a, b)]

    def call(i):
        r = clients[i % 2].post("/proxy/openai/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                json={"model": "gpt-4o-mini", "messages": MESSAGES})
        return r.status_code

    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        statuses = list(pool.map(call, range(1000)))
    assert statuses.count(200) == 1000
    a.usage_for_agent(agent["id"], 1000, timeout=30)
    assert a.balance(agent["id"]) == Decimal("1") - 1000 * GPT_4O_MINI_CALL
    assert b.balance(agent["id"]) == Decimal("1") - 1000 * GPT_4O_MINI_CALL


def test_thousand_concurrent_calls_through_one_nginx_upstream_block(pair, tmp_path_factory):
    """The way users outgrow one process: nginx spreads calls over both."""
    from .test_nginx import Front

    a, b = pair
    agent, key = a.agent_with_key("1")
    front = Front([a, b], tmp_path_factory.mktemp("nginx-pair"))
    try:
        client = httpx.Client(verify=front.tls(), timeout=30,
                              limits=httpx.Limits(max_connections=100, max_keepalive_connections=100))

        def call(_):
            r = client.post(front.url + "/proxy/openai/v1/chat/completions",
                            headers={"Authorization": f"Bearer {key}"},
                            json={"model": "gpt-4o-mini", "messages": MESSAGES})
            return r.status_code

        with concurrent.futures.ThreadPoolExecutor(100) as pool:
            statuses = list(pool.map(call, range(1000)))
    finally:
        front.stop()
    assert statuses.count(200) == 1000
    records = a.usage_for_agent(agent["id"], 1000, timeout=30)
    served_by_a = sum(1 for line in a.read_log().splitlines() if "POST /proxy/openai" in line)
    served_by_b = sum(1 for line in b.read_log().splitlines() if "POST /proxy/openai" in line)
    assert served_by_a > 100 and served_by_b > 100 and served_by_a + served_by_b == 1000
    assert len({r["request_id"] for r in records}) == 1000
    assert a.balance(agent["id"]) == Decimal("1") - 1000 * GPT_4O_MINI_CALL


def test_revocation_skill_and_price_changes_reach_the_other_process(pair):
    a, b = pair
    agent, key = a.agent_with_key("5")
    assert call_status(b, key) == 200  # b has the key cached now
    created = a.create_key(agent["id"])
    assert call_status(b, created["key"]) == 200
    a.admin("DELETE", f"/keys/{created['id']}")
    assert call_status(a, created["key"]) == 401  # at once where it was revoked
    assert time_until(lambda: call_status(b, created["key"]) == 401) < PROPAGATION_BOUND

    # A gate and a skill: the agent lacks "chat" → 403 on b once the gate is known.
    a.admin("PUT", "/gates", json={"provider": "openai", "route": "/v1/chat/completions", "skill": "chat"})
    assert time_until(lambda: call_status(b, key) == 403) < PROPAGATION_BOUND
    a.admin("PATCH", f"/agents/{agent['id']}", json={"skills": ["chat"]})
    assert time_until(lambda: call_status(b, key) == 200) < PROPAGATION_BOUND
    a.admin("PATCH", f"/agents/{agent['id']}", json={"skills": []})
    assert time_until(lambda: call_status(b, key) == 403) < PROPAGATION_BOUND
    gate_id = [g for g in a.admin("GET", "/gates").json()["data"] if g["skill"] == "chat"][0]["id"]
    a.admin("DELETE", f"/gates/{gate_id}")
    assert time_until(lambda: call_status(b, key) == 200) < PROPAGATION_BOUND

    # A price change on a: b charges the new price within the bound.
    a.admin("PUT", "/prices", json={"provider": "openai", "model": "gpt-4o-mini", "input": "100", "output": "100",
                                     "cached_input": "100"})
    new_price = Decimal(fake_total_tokens()) * 100 / 1_000_000

    def b_charges_new_price():
        raw = sdk(b, key).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        return Decimal(b.usage(raw.headers["x-kylon-request-id"])["credits"]) == new_price

    assert time_until(b_charges_new_price) < PROPAGATION_BOUND + 1


def fake_total_tokens():
    from .fakes import openai_fake

    return openai_fake.PROMPT_TOKENS + openai_fake.COMPLETION_TOKENS


def start_held_streams(k, key, count, fake):
    """`count` streams that may write 24,950 output tokens (0.499 credits at the
    20 per million set here for `held-stream`: two fit in a balance of 1, and
    leave less than a plain gpt-4o-mini call holds) and stay open until
    fake.release is set."""
    k.admin("PUT", "/prices", json={"provider": "openai", "model": "held-stream",
                                               "input": "5", "output": "20"}).raise_for_status()
    streams = []
    for _ in range(count):
        response = sdk(k, key).chat.completions.with_streaming_response.create(
            model="held-stream", messages=MESSAGES, stream=True, max_completion_tokens=24_950
        ).__enter__()
        next(iter(response.parse()))
        streams.append(response)
    return streams


def finish_held_streams(streams, fake):
    """Let the held streams end, and read each to its end."""
    fake.release.set()
    for response in streams:
        list(response.parse())
        response.close()


def test_holds_limit_calls_in_flight(make_kylon, fake_openai):
    k = make_kylon()
    agent, key = k.agent_with_key("1")
    fake_openai.release.clear()
    try:
        streams = start_held_streams(k, key, 2, fake_openai)
        # 1 credit less two holds of ~0.499: not enough left for a third call.
        assert call_status(k, key) == 402
        finish_held_streams(streams, fake_openai)
    finally:
        fake_openai.release.set()
    # Holds released: the balance only lost what the calls really cost.
    assert call_status(k, key) == 200
    k.usage_for_agent(agent["id"], 4)
    assert k.balance(agent["id"]) > Decimal("0.99")


def test_holds_count_across_processes(pair, fake_openai):
    a, b = pair
    agent, key = a.agent_with_key("1")
    assert call_status(b, key) == 200
    fake_openai.release.clear()
    try:
        streams = start_held_streams(a, key, 2, fake_openai)
        assert time_until(lambda: call_status(b, key) == 402) < PROPAGATION_BOUND
        finish_held_streams(streams, fake_openai)
    finally:
        fake_openai.release.set()
    assert time_until(lambda: call_status(b, key) == 200) < PROPAGATION_BOUND
