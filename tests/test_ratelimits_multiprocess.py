"""Rate limits across two Kylon processes on one MariaDB behind nginx: the
requests admitted in a minute, over both, never exceed the key's rpm."""

import concurrent.futures

import httpx
import pytest

from .conftest import drop_database, scratch_database_url
from .test_nginx import Front
from .test_openai_e2e import MESSAGES
from .test_ratelimits import avoid_minute_boundary, counter, limited_key, metrics_text


@pytest.fixture
def pair(tmp_path_factory, make_kylon):
    url = scratch_database_url("mariadb", tmp_path_factory)
    a = make_kylon({"KYLON_TRUST_PROXY_HEADERS": "1"}, database_url=url)
    b = make_kylon({"KYLON_TRUST_PROXY_HEADERS": "1"}, database_url=url)
    yield a, b
    a.stop()
    b.stop()
    drop_database(url)


def test_rpm_30_over_two_processes_behind_nginx_lets_exactly_30_through(pair, tmp_path_factory):
    a, b = pair
    agent, key = limited_key(a, rpm_limit=30)
    front = Front([a, b], tmp_path_factory.mktemp("nginx-rate"))
    try:
        client = httpx.Client(verify=front.tls(), timeout=30,
                              limits=httpx.Limits(max_connections=30, max_keepalive_connections=30))

        def call(_):
            return client.post(front.url + "/proxy/openai/v1/chat/completions",
                               headers={"Authorization": f"Bearer {key['key']}"},
                               json={"model": "gpt-4o-mini", "messages": MESSAGES}).status_code

        avoid_minute_boundary()
        with concurrent.futures.ThreadPoolExecutor(30) as pool:
            statuses = list(pool.map(call, range(90)))
    finally:
        front.stop()
    assert statuses.count(200) == 30 and statuses.count(429) == 60
    # Both processes served and refused some: the bound is the store's, not one process's.
    for k in (a, b):
        text = metrics_text(k)
        assert counter(text, "kylon_requests_total", provider="openai", route="chat.completions",
                       status_class="2xx") > 0
        assert counter(text, "kylon_rate_limited_total", limit="rpm", subject="key") > 0
