"""Bad proxy keys meet the admin token's policy (issue 15, point 3): per client
address, ever slower 401s after a few free ones, and 429 with Retry-After
while several wait. A Kylon per database kind with 2 free failures; each test
sends from a loopback address of its own (127.0.0.8 and up)."""

import concurrent.futures
import time

import httpx
import pytest

from .conftest import drop_database, scratch_database_url
from .kylon_process import Kylon

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def strict(request, tmp_path_factory, upstream_env):
    url = scratch_database_url(request.param, tmp_path_factory)
    instance = Kylon(url, {**upstream_env, "KYLON_BAD_KEY_FREE_FAILURES": "2"}, name="throttle-" + request.param)
    instance.db_kind = request.param
    yield instance
    instance.stop()
    drop_database(url)


def chat(kylon, address, key):
    with httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30) as client:
        started = time.monotonic()
        answer = client.post(kylon.url + "/proxy/openai/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                             json={"model": "gpt-4o-mini", "messages": MESSAGES})
        return answer, time.monotonic() - started


def test_bad_keys_slow_down_then_queue_into_429(strict):
    address = "127.0.0.8" if strict.db_kind == "sqlite" else "127.0.0.9"
    took = [chat(strict, address, f"pak_wrong{i}")[1] for i in range(2)]
    assert max(took) < 0.3  # the free ones
    answer, seconds = chat(strict, address, "pak_wrong")
    assert answer.status_code == 401 and seconds >= 0.04
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: chat(strict, address, f"pak_guess{i}"), range(8)))
    statuses = [a.status_code for a, _ in answers]
    assert set(statuses) == {401, 429}, statuses
    for answer, seconds in answers:
        if answer.status_code == 429:
            assert int(answer.headers["Retry-After"]) >= 1 and seconds < 0.4
            error = answer.json()["error"]
            assert error["type"] == "rate_limit_error" and "Too many bad Kylon API keys" in error["message"]
    # Another address is not held back; a good key from this one goes straight through.
    assert chat(strict, "127.0.0.1", "pak_other")[1] < 0.3
    _, key = strict.agent_with_key("5")
    answer, seconds = chat(strict, address, key)
    assert answer.status_code == 200 and seconds < 0.5


def test_the_address_behind_a_trusted_proxy_is_throttled(make_kylon):
    """With KYLON_TRUST_PROXY_HEADERS on, the address the proxy names is the one counted."""
    k = make_kylon({"KYLON_TRUST_PROXY_HEADERS": "1", "KYLON_BAD_KEY_FREE_FAILURES": "0"})

    def bad(client_ip):
        started = time.monotonic()
        answer = httpx.post(k.url + "/proxy/openai/v1/chat/completions", json={}, timeout=30,
                            headers={"Authorization": "Bearer pak_wrong", "X-Real-IP": client_ip})
        return answer.status_code, time.monotonic() - started

    slow = [bad("203.0.113.7") for _ in range(5)]
    assert slow[-1][1] > slow[0][1] and slow[-1][1] >= 0.4, slow
    assert bad("203.0.113.8")[1] < 0.3  # another client behind the same proxy
