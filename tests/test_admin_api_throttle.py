"""Wrong admin tokens on the JSON API slow down per client address, as on the
log-in page (one count for both: kylon/throttle.py, Services.admin_tokens).
Each test sends from a loopback address of its own, 127.0.0.x, so the other
tests' address (127.0.0.1) is never slowed."""

import concurrent.futures
import time

import httpx

from .kylon_process import ADMIN_TOKEN


def client_from(kylon, address):
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), base_url=kylon.url, timeout=30)


def agents(client, token):
    started = time.monotonic()
    answer = client.get("/admin/api/agents", headers={"Authorization": f"Bearer {token}"})
    return answer, time.monotonic() - started


def test_wrong_tokens_slow_down_and_the_right_one_resets(kylon):
    address = "127.0.0.4" if kylon.db_kind == "sqlite" else "127.0.0.5"
    with client_from(kylon, address) as client:
        took = []
        for _ in range(3):
            answer, seconds = agents(client, "kat_wrong")
            assert answer.status_code == 401, answer.text
            took.append(seconds)
        assert took[0] < 0.4, took
        assert took[1] >= 0.45, took
        assert took[2] >= 0.95 and took[2] > took[1], took
        # Another address is not held back by this one's failures.
        started = time.monotonic()
        assert kylon.admin("GET", "/agents").status_code == 200
        assert time.monotonic() - started < 0.4
        # The right token from the throttled address is let in at once, and clears its count.
        answer, seconds = agents(client, ADMIN_TOKEN)
        assert answer.status_code == 200 and seconds < 0.4, seconds
        answer, seconds = agents(client, "kat_wrong")
        assert answer.status_code == 401 and seconds < 0.4, seconds
        assert agents(client, ADMIN_TOKEN)[0].status_code == 200
    assert f"401 GET /admin/api/agents {address}" in kylon.read_log()


def test_a_queue_of_wrong_tokens_is_refused_with_429(kylon):
    """Attempts from one address are checked one at a time; with three in line
    (one waiting out its delay), more are refused at once with Retry-After."""
    address = "127.0.0.6" if kylon.db_kind == "sqlite" else "127.0.0.7"
    with client_from(kylon, address) as first:
        assert agents(first, "kat_wrong")[0].status_code == 401

    def wrong(_):
        with client_from(kylon, address) as client:
            return agents(client, "kat_wrong")

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(wrong, range(6)))
    refused = [(a, s) for a, s in answers if a.status_code == 429]
    assert {a.status_code for a, _ in answers} == {401, 429}
    assert refused, [a.status_code for a, _ in answers]
    for answer, seconds in refused:
        assert int(answer.headers["Retry-After"]) >= 1 and seconds < 0.4
        assert answer.json()["error"]["type"] == "rate_limit_error"
    with client_from(kylon, address) as client:
        assert agents(client, ADMIN_TOKEN)[0].status_code == 200
