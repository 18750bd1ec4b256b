"""Rate limits per agent and per key (rpm, tpm, concurrency) as the official
SDKs meet them: 429 in each provider's error shape with Retry-After and
OpenAI's x-ratelimit-* headers, on SQLite and MariaDB."""

import concurrent.futures
import re
import time

import anthropic
import cerebras.cloud.sdk as cerebras
import httpx
import openai
import pytest
from elevenlabs import ElevenLabs
from elevenlabs.core.api_error import ApiError
from google import genai
from google.genai import errors as genai_errors

from .test_multiprocess import finish_held_streams
from .test_openai_e2e import MESSAGES

RESET = re.compile(r"^([0-9]|[1-5][0-9])s$|^1m0s$")


def avoid_minute_boundary(seconds_needed=10):
    """Windows are clock minutes: a test counting calls in one minute starts
    where the minute has time enough left."""
    left = 60 - time.time() % 60
    if left < seconds_needed:
        time.sleep(left + 0.05)


def sdk(kylon, key):
    return openai.OpenAI(base_url=kylon.url + "/proxy/openai/v1", api_key=key, max_retries=0)


def chat(kylon, key, **kwargs):
    return sdk(kylon, key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, **kwargs)


def limited_key(kylon, credits="100", **limits):
    agent = kylon.create_agent(credits)
    return agent, kylon.create_key(agent["id"], **limits)


def metrics_text(kylon):
    return httpx.get(kylon.url + "/metrics", timeout=10).text


def counter(text, name, **labels):
    wanted = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
    for line in text.splitlines():
        if line.startswith(name + wanted + " "):
            return float(line.split()[-1])
    return 0.0


def test_key_rpm_with_openai_sdk(kylon, fake_openai):
    agent, key = limited_key(kylon, rpm_limit=3)
    before = metrics_text(kylon)
    avoid_minute_boundary()
    for remaining in (2, 1, 0):
        raw = chat(kylon, key["key"])
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert raw.headers["x-ratelimit-remaining-requests"] == str(remaining)
        assert RESET.match(raw.headers["x-ratelimit-reset-requests"])
        assert "x-ratelimit-limit-tokens" not in raw.headers  # no tpm set: the operator's own are not shown either
    received = len(fake_openai.received)
    with pytest.raises(openai.RateLimitError) as err:
        chat(kylon, key["key"])
    headers = err.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "3" and headers["x-ratelimit-remaining-requests"] == "0"
    reset = headers["x-ratelimit-reset-requests"]
    assert RESET.match(reset) and 1 <= int(headers["Retry-After"]) <= 60
    assert int(headers["Retry-After"]) == (60 if reset == "1m0s" else int(reset[:-1]))
    assert err.value.code == "rate_limit_exceeded" and err.value.body["type"] == "rate_limit_error"
    message = err.value.body["message"]
    assert "this Kylon key's requests per minute (rpm_limit 3): 3 of 3 used this minute" in message
    assert re.search(r"it resets in \d+s \(at \d\d:\d\d:00 UTC\)", message), message
    assert len(fake_openai.received) == received  # nothing went upstream
    record = kylon.usage(headers["x-kylon-request-id"])
    assert record["status"] == "rejected" and record["http_status"] == 429
    after = metrics_text(kylon)
    for name, labels in (("kylon_rejected_requests_total", {"provider": "openai", "reason": "rate_limit"}),
                         ("kylon_rate_limited_total", {"limit": "rpm", "subject": "key"})):
        assert counter(after, name, **labels) == counter(before, name, **labels) + 1


def test_a_limited_key_stops_while_the_agents_other_key_goes_on(kylon):
    agent, limited = limited_key(kylon, rpm_limit=1)
    other = kylon.create_key(agent["id"])
    avoid_minute_boundary()
    assert chat(kylon, limited["key"]).http_response.status_code == 200
    with pytest.raises(openai.RateLimitError):
        chat(kylon, limited["key"])
    for _ in range(3):
        raw = chat(kylon, other["key"])
        assert raw.http_response.status_code == 200
        assert "x-ratelimit-limit-requests" not in raw.headers


def test_agent_rpm_with_anthropic_sdk(kylon):
    agent = kylon.create_agent("100")
    assert kylon.admin("PATCH", f"/agents/{agent['id']}", json={"rpm_limit": 2}).status_code == 200
    keys = [kylon.create_key(agent["id"])["key"] for _ in range(2)]
    client = [anthropic.Anthropic(base_url=kylon.url + "/proxy/anthropic", api_key=k, max_retries=0) for k in keys]
    avoid_minute_boundary()
    for c in client:  # the agent's limit counts both keys' calls
        c.messages.create(model="claude-sonnet-4-5", max_tokens=20, messages=MESSAGES)
    with pytest.raises(anthropic.RateLimitError) as err:
        client[0].messages.create(model="claude-sonnet-4-5", max_tokens=20, messages=MESSAGES)
    assert err.value.body["error"]["type"] == "rate_limit_error"
    assert "this agent's requests per minute (rpm_limit 2): 2 of 2 used" in err.value.message
    assert err.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(err.value.response.headers["retry-after"]) >= 1


def test_tpm_counts_the_hold_then_the_usage(kylon):
    """tpm 60: a call holds its input estimate + max_tokens (~41 here) while
    it runs and then counts its usage (9 + 12 = 21 from the fake)."""
    agent, key = limited_key(kylon, tpm_limit=60)
    avoid_minute_boundary()
    raw = chat(kylon, key["key"], max_tokens=20)
    assert raw.headers["x-ratelimit-limit-tokens"] == "60"
    held = 60 - int(raw.headers["x-ratelimit-remaining-tokens"])  # the hold counts while it runs
    assert 30 < held < 60
    # After it: 21 used, 39 left — not enough for the next hold of `held`.
    with pytest.raises(openai.RateLimitError) as err:
        chat(kylon, key["key"], max_tokens=20)
    message = err.value.body["message"]
    assert f"this Kylon key's tokens per minute (tpm_limit 60): 21 of 60 used or held this minute; " \
           f"this call may use up to {held}; it resets in" in message
    assert err.value.response.headers["x-ratelimit-remaining-tokens"] == "39"
    assert RESET.match(err.value.response.headers["x-ratelimit-reset-tokens"])
    # A call whose hold alone is over the limit is told so.
    with pytest.raises(openai.RateLimitError) as err:
        chat(kylon, key["key"], max_tokens=1000)
    assert "more than this Kylon key's tokens per minute (tpm_limit 60)" in err.value.body["message"]
    # A smaller call still fits.
    assert chat(kylon, key["key"], max_tokens=1).http_response.status_code == 200


def test_concurrency_limit_against_held_streams(kylon, fake_openai):
    agent, key = limited_key(kylon, concurrency_limit=2)
    fake_openai.release.clear()
    streams = []
    try:
        for _ in range(2):
            response = sdk(kylon, key["key"]).chat.completions.with_streaming_response.create(
                model="held-stream", messages=MESSAGES, stream=True, max_tokens=50).__enter__()
            next(iter(response.parse()))
            streams.append(response)
        with pytest.raises(openai.RateLimitError) as err:
            chat(kylon, key["key"])
        assert "this Kylon key's concurrent calls (concurrency_limit 2): 2 running" in err.value.body["message"]
        assert err.value.response.headers["Retry-After"] == "1"
    finally:
        finish_held_streams(streams, fake_openai)
    assert chat(kylon, key["key"]).http_response.status_code == 200


def test_two_hundred_parallel_calls_at_rpm_10_let_exactly_10_through(kylon):
    agent, key = limited_key(kylon, rpm_limit=10)
    client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=200, max_keepalive_connections=200))

    def call(_):
        return client.post(kylon.url + "/proxy/openai/v1/chat/completions",
                           headers={"Authorization": f"Bearer {key['key']}"},
                           json={"model": "gpt-4o-mini", "messages": MESSAGES}).status_code

    avoid_minute_boundary()
    with concurrent.futures.ThreadPoolExecutor(200) as pool:
        statuses = list(pool.map(call, range(200)))
    assert statuses.count(200) == 10 and statuses.count(429) == 190


def test_two_hundred_parallel_streams_at_concurrency_5(kylon, fake_openai):
    agent, key = limited_key(kylon, concurrency_limit=5)
    fake_openai.release.clear()
    client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=200, max_keepalive_connections=200))

    def call(_):
        with client.stream("POST", kylon.url + "/proxy/openai/v1/chat/completions",
                           headers={"Authorization": f"Bearer {key['key']}"},
                           json={"model": "held-stream", "messages": MESSAGES, "stream": True,
                                 "max_tokens": 50}) as r:
            r.read()
            return r.status_code

    try:
        with concurrent.futures.ThreadPoolExecutor(200) as pool:
            futures = [pool.submit(call, i) for i in range(200)]
            # The refused ones come back while the admitted five are held.
            deadline = time.monotonic() + 20
            while sum(f.done() for f in futures) < 195 and time.monotonic() < deadline:
                time.sleep(0.05)
            done = [f.result() for f in futures if f.done()]
            assert len(done) == 195 and set(done) == {429}
            fake_openai.release.set()
            statuses = [f.result() for f in futures]
    finally:
        fake_openai.release.set()
    assert statuses.count(200) == 5 and statuses.count(429) == 195


def test_gemini_cerebras_and_elevenlabs_sdks_see_rate_limit_errors(kylon):
    agent = kylon.create_agent("100", skills=["elevenlabs"])
    keys = [kylon.create_key(agent["id"], rpm_limit=1)["key"] for _ in range(3)]
    avoid_minute_boundary()

    gemini = genai.Client(api_key=keys[0], http_options={"base_url": kylon.url + "/proxy/gemini"})
    gemini.models.generate_content(model="gemini-2.5-flash", contents="Hi")
    with pytest.raises(genai_errors.ClientError) as err:
        gemini.models.generate_content(model="gemini-2.5-flash", contents="Hi")
    assert err.value.code == 429 and err.value.status == "RESOURCE_EXHAUSTED"
    assert "rpm_limit 1" in err.value.message

    client = cerebras.Cerebras(base_url=kylon.url + "/proxy/cerebras", api_key=keys[1], max_retries=0,
                               warm_tcp_connection=False)  # the warm-up is a request too
    client.chat.completions.create(model="llama3.1-8b", messages=MESSAGES)
    with pytest.raises(cerebras.RateLimitError) as err:
        client.chat.completions.create(model="llama3.1-8b", messages=MESSAGES)
    assert err.value.response.headers["x-ratelimit-remaining-requests"] == "0"

    eleven = ElevenLabs(base_url=kylon.url + "/proxy/elevenlabs", api_key=keys[2], timeout=10)
    no_retry = {"max_retries": 0}
    b"".join(eleven.text_to_speech.convert("21m00Tcm4TlvDq8ikWAM", text="Hi", request_options=no_retry))
    with pytest.raises(ApiError) as err:
        b"".join(eleven.text_to_speech.convert("21m00Tcm4TlvDq8ikWAM", text="Hi", request_options=no_retry))
    assert err.value.status_code == 429
    assert err.value.body["detail"]["status"] == "rate_limit_exceeded"
    assert "rpm_limit 1" in err.value.body["detail"]["message"]


def test_a_limit_change_applies_to_the_next_call(kylon):
    agent, key = limited_key(kylon, rpm_limit=1)
    avoid_minute_boundary()
    chat(kylon, key["key"])
    with pytest.raises(openai.RateLimitError):
        chat(kylon, key["key"])
    assert kylon.admin("PATCH", f"/keys/{key['id']}", json={"rpm_limit": None}).status_code == 200
    assert chat(kylon, key["key"]).http_response.status_code == 200
