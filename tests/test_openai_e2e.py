"""OpenAI chat completions and Responses through Kylon, with the official
`openai` SDK as the client, on SQLite and on MariaDB (the `kylon` fixture)."""

import concurrent.futures
import socket
import time
from decimal import Decimal

import httpx
import openai
import pytest

from .fakes import openai_fake as fake_wire

MESSAGES = [{"role": "user", "content": "Say hi"}]
# gpt-4o-mini list prices per 1M tokens: input 0.15, cached input 0.075, output 0.60.
GPT_4O_MINI_CALL = (
    (fake_wire.PROMPT_TOKENS - fake_wire.CACHED_TOKENS) * Decimal("0.15")
    + fake_wire.CACHED_TOKENS * Decimal("0.075")
    + fake_wire.COMPLETION_TOKENS * Decimal("0.60")
) / 1_000_000


def client(kylon, key, **kwargs):
    return openai.OpenAI(base_url=kylon.url + "/proxy/openai/v1", api_key=key, max_retries=0, **kwargs)


def assert_no_kylon_key_upstream(received, key):
    received.assert_only_operator_credential("authorization", "Bearer sk-operator-openai-secret")


# -- chat completions ----------------------------------------------------------


def test_chat_completion(kylon, fake_openai, agent_key):
    agent, key = agent_key
    raw = client(kylon, key).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the fake upstream!"
    assert completion.usage.prompt_tokens == fake_wire.PROMPT_TOKENS
    request_id = raw.headers["x-kylon-request-id"]
    assert raw.headers["x-request-id"] == "req_fake_chat"  # upstream's id passed back
    received = fake_openai.last()
    assert received.path == "/v1/chat/completions" and received.method == "POST"
    assert_no_kylon_key_upstream(received, key)

    record = kylon.usage(request_id)
    assert record["status"] == "completed" and record["http_status"] == 200
    assert record["provider"] == "openai" and record["route"] == "chat.completions"
    assert record["model"] == "gpt-4o-mini" and record["stream"] is False
    assert record["input_tokens"] == fake_wire.PROMPT_TOKENS
    assert record["cached_input_tokens"] == fake_wire.CACHED_TOKENS
    assert record["output_tokens"] == fake_wire.COMPLETION_TOKENS
    assert record["reasoning_tokens"] == fake_wire.REASONING_TOKENS
    assert Decimal(record["credits"]) == GPT_4O_MINI_CALL
    assert record["estimated"] is False and record["fallback_price"] is False
    assert record["agent_id"] == agent["id"] and record["ttfb_ms"] is not None
    assert kylon.balance(agent["id"]) == Decimal("100") - GPT_4O_MINI_CALL


def test_a_client_leaving_after_done_completed_its_call(kylon, fake_openai, agent_key):
    """The SDK stops at [DONE] and closes; the upstream's response ends later.
    The client had the whole answer: the call is completed, billed as reported."""
    agent, key = agent_key
    with client(kylon, key).chat.completions.with_streaming_response.create(
        model="linger-after-done", messages=MESSAGES, stream=True
    ) as response:
        request_id = response.headers["x-kylon-request-id"]
        chunks = list(response.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from the fake upstream!"
    record = kylon.usage(request_id)
    assert record["status"] == "completed" and record["estimated"] is False
    assert record["input_tokens"] == 9 and record["output_tokens"] == 12


def test_chat_stream_hides_the_usage_chunk_kylon_asked_for(kylon, fake_openai, agent_key):
    agent, key = agent_key
    with client(kylon, key).chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    ) as response:
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["content-type"].startswith("text/event-stream")
        request_id = response.headers["x-kylon-request-id"]
        chunks = list(response.parse())
    assert all(chunk.choices for chunk in chunks), "the client did not ask for the usage chunk"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from the fake upstream!"
    sent = fake_openai.last()
    assert b'"include_usage": true' in sent.body
    record = kylon.usage(request_id)
    assert record["stream"] is True and record["status"] == "completed"
    assert record["output_tokens"] == fake_wire.COMPLETION_TOKENS and record["estimated"] is False
    assert Decimal(record["credits"]) == GPT_4O_MINI_CALL
    assert kylon.balance(agent["id"]) == Decimal("100") - GPT_4O_MINI_CALL


def test_chat_stream_keeps_the_usage_chunk_the_client_asked_for(kylon, agent_key):
    _, key = agent_key
    stream = client(kylon, key).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == fake_wire.COMPLETION_TOKENS


def test_chunks_are_relayed_as_they_arrive(kylon, fake_openai, agent_key):
    """The first chunk reaches the client while the upstream holds back the rest."""
    _, key = agent_key
    fake_openai.release.clear()
    try:
        stream = client(kylon, key).chat.completions.create(model="held-stream", messages=MESSAGES, stream=True)
        first_two = [next(stream), next(stream)]
        assert first_two[1].choices[0].delta.content == "Hello"
        assert not fake_openai.release.is_set()  # the upstream is still holding back
        fake_openai.release.set()
        rest = list(stream)
        assert rest[-1].choices[0].finish_reason == "stop"
    finally:
        fake_openai.release.set()


# -- Responses -----------------------------------------------------------------


def test_responses(kylon, fake_openai, agent_key):
    agent, key = agent_key
    raw = client(kylon, key).responses.with_raw_response.create(model="gpt-4o-mini", input="Hi")
    assert raw.parse().output_text == "Hello from the fake upstream!"
    assert fake_openai.last().path == "/v1/responses"
    record = kylon.usage(raw.headers["x-kylon-request-id"])
    assert record["route"] == "responses" and record["input_tokens"] == fake_wire.PROMPT_TOKENS
    assert record["output_tokens"] == fake_wire.COMPLETION_TOKENS
    assert Decimal(record["credits"]) == GPT_4O_MINI_CALL


def test_responses_stream(kylon, agent_key):
    agent, key = agent_key
    with client(kylon, key).responses.with_streaming_response.create(
        model="gpt-4o-mini", input="Hi", stream=True
    ) as response:
        request_id = response.headers["x-kylon-request-id"]
        events = list(response.parse())
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    record = kylon.usage(request_id)
    assert record["stream"] is True and record["cached_input_tokens"] == fake_wire.CACHED_TOKENS
    assert record["output_tokens"] == fake_wire.COMPLETION_TOKENS and record["estimated"] is False
    assert kylon.balance(agent["id"]) == Decimal("100") - GPT_4O_MINI_CALL


# -- disconnects ----------------------------------------------------------------


@pytest.mark.parametrize("route", ["chat", "responses"])
def test_disconnect_mid_stream_stops_a_silent_upstream(kylon, fake_openai, agent_key, route):
    """The upstream sends one chunk and then nothing for 30 s; the client leaves."""
    agent, key = agent_key
    c = client(kylon, key)
    if route == "chat":
        response = c.chat.completions.with_streaming_response.create(
            model="silent-stream", messages=MESSAGES, stream=True
        )
    else:
        response = c.responses.with_streaming_response.create(model="silent-stream", input="Hi", stream=True)
    with response as r:
        request_id = r.headers["x-kylon-request-id"]
        events = iter(r.parse())
        # Read up to the first content (then the upstream goes silent).
        while True:
            event = next(events)
            if getattr(event, "type", "") == "response.output_text.delta" or getattr(event, "choices", None):
                if route == "responses" or event.choices[0].delta.content:
                    break
        received = fake_openai.last()
        left_at = time.monotonic()
        r.close()
    closed_at = fake_openai.wait_closed(received, timeout=5)
    assert closed_at is not None, "the upstream connection was never closed"
    assert closed_at - left_at < 1.5
    record = kylon.usage(request_id)
    assert record["status"] == "disconnected" and record["estimated"] is True
    assert record["input_tokens"] > 0 and record["output_tokens"] >= 1
    assert Decimal(record["credits"]) > 0
    assert kylon.balance(agent["id"]) == Decimal("100") - Decimal(record["credits"])


def test_disconnect_during_a_non_streaming_call_cancels_it(kylon, fake_openai, agent_key):
    _, key = agent_key
    fake_openai.reset()
    with pytest.raises(openai.APITimeoutError):
        client(kylon, key, timeout=0.5).chat.completions.create(model="slow-headers", messages=MESSAGES)
    received = fake_openai.last()
    assert fake_openai.wait_closed(received, timeout=3) is not None
    record = kylon.usage_for_agent(agent_key[0]["id"], 1)[0]
    assert record["status"] == "disconnected" and record["model"] == "slow-headers"
    assert record["estimated"] is True


# -- keys ---------------------------------------------------------------------------


def test_key_in_x_api_key_header(kylon, agent_key):
    _, key = agent_key
    r = httpx.post(kylon.url + "/proxy/openai/v1/chat/completions", headers={"x-api-key": key},
                   json={"model": "gpt-4o-mini", "messages": MESSAGES})
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"


@pytest.mark.parametrize("problem", ["missing", "unknown", "revoked", "expired"])
def test_bad_keys_get_401_in_openai_shape(kylon, fake_openai, problem):
    key = kylon.bad_key(problem)
    fake_openai.reset()
    with pytest.raises(openai.AuthenticationError) as err:
        client(kylon, key or "none").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    body = err.value.body
    assert body["code"] == "invalid_api_key" and body["type"] == "invalid_request_error"
    assert err.value.response.headers["x-kylon-request-id"].startswith("req_")
    assert fake_openai.received == []


def test_revocation_applies_to_the_next_call(kylon, agent_key):
    agent, _ = agent_key
    created = kylon.create_key(agent["id"])
    c = client(kylon, created["key"])
    c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    kylon.admin("DELETE", f"/keys/{created['id']}")
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def test_keys_are_random_and_stored_hashed(kylon):
    agent = kylon.create_agent("1")
    keys = [kylon.create_key(agent["id"]) for _ in range(3)]
    assert len({k["key"] for k in keys}) == 3
    for k in keys:
        assert k["key"].startswith("pak_") and len(k["key"]) >= 4 + 22  # ≥128 bits of base64
        assert k["key"].startswith(k["prefix"]) and len(k["prefix"]) < len(k["key"])
    listed = kylon.admin("GET", f"/agents/{agent['id']}/keys").json()["data"]
    assert all("key" not in row for row in listed)
    assert not any(k["key"] in str(listed) for k in keys)


# -- credits ------------------------------------------------------------------------


def test_no_credits_means_402_before_upstream(kylon, fake_openai):
    agent, key = kylon.agent_with_key("0")
    fake_openai.reset()
    with pytest.raises(openai.APIStatusError) as err:
        client(kylon, key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert err.value.status_code == 402
    assert fake_openai.received == []
    record = kylon.usage(err.value.response.headers["x-kylon-request-id"])
    assert record["status"] == "rejected" and record["http_status"] == 402 and record["credits"] == "0E-9"


def test_fifty_concurrent_calls_debit_exactly(kylon):
    agent, key = kylon.agent_with_key("1")
    c = client(kylon, key)

    def call(_):
        return c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).usage.total_tokens

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(call, range(50)))
    assert len(results) == 50
    kylon.usage_for_agent(agent["id"], 50)
    assert kylon.balance(agent["id"]) == Decimal("1") - 50 * GPT_4O_MINI_CALL


def test_many_streams_are_relayed_at_once(kylon, fake_openai, agent_key):
    """40 streams held open by the upstream all get their first chunks while
    the others are still open: no small pool of upstream connections makes
    the rest wait for a free one."""
    agent, key = agent_key
    count = 40
    c = client(kylon, key)
    started = concurrent.futures.ThreadPoolExecutor(count)
    first_chunks = []

    def stream(_):
        with c.chat.completions.with_streaming_response.create(
            model="held-stream", messages=MESSAGES, stream=True
        ) as response:
            chunks = iter(response.parse())
            next(chunks), next(chunks)  # the upstream holds the rest back
            first_chunks.append(time.monotonic())
            return sum(1 for _ in chunks) + 2

    fake_openai.release.clear()
    try:
        futures = [started.submit(stream, i) for i in range(count)]
        deadline = time.monotonic() + 20
        while len(first_chunks) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(first_chunks) == count, f"only {len(first_chunks)} of {count} streams started"
    finally:
        fake_openai.release.set()
    assert all(f.result(timeout=20) > 2 for f in futures)
    started.shutdown()
    fake_openai.release.clear()
    records = kylon.usage_for_agent(agent["id"], count)
    assert all(r["status"] == "completed" for r in records)


def test_unknown_model_is_charged_the_fallback_price_and_flagged(kylon, agent_key):
    _, key = agent_key
    raw = client(kylon, key).chat.completions.with_raw_response.create(model="brand-new-model", messages=MESSAGES)
    record = kylon.usage(raw.headers["x-kylon-request-id"])
    assert record["fallback_price"] is True
    # OpenAI's fallback, its dearest current model (o1-pro): 150 input, 600 output per 1M tokens.
    expected = (fake_wire.PROMPT_TOKENS * Decimal(150) + fake_wire.COMPLETION_TOKENS * Decimal(600)) / 1_000_000
    assert Decimal(record["credits"]) == expected


def test_admin_price_override_applies(kylon, agent_key):
    _, key = agent_key
    r = kylon.admin("PUT", "/prices", json={"provider": "openai", "model": "gpt-4.1-nano", "input": "1", "output": "2"})
    assert r.status_code == 200, r.text
    raw = client(kylon, key).chat.completions.with_raw_response.create(model="gpt-4.1-nano-2025-04-14", messages=MESSAGES)
    record = kylon.usage(raw.headers["x-kylon-request-id"])
    # Fields the override leaves out keep their default (cached input 0.025).
    plain = fake_wire.PROMPT_TOKENS - fake_wire.CACHED_TOKENS
    expected = (plain * 1 + fake_wire.CACHED_TOKENS * Decimal("0.025") + fake_wire.COMPLETION_TOKENS * 2) / 1_000_000
    assert Decimal(record["credits"]) == expected


# -- errors ---------------------------------------------------------------------------


def test_upstream_429_passes_through(kylon, agent_key):
    agent, key = agent_key
    with pytest.raises(openai.RateLimitError) as err:
        client(kylon, key).chat.completions.create(model="error-429", messages=MESSAGES)
    assert err.value.body["code"] == "rate_limit_exceeded"
    assert err.value.response.headers["x-request-id"] == "req_fake_error"
    record = kylon.usage(err.value.response.headers["x-kylon-request-id"])
    assert record["status"] == "upstream_error" and record["http_status"] == 429
    assert kylon.balance(agent["id"]) == Decimal("100")


def test_upstream_500_passes_through(kylon, agent_key):
    _, key = agent_key
    with pytest.raises(openai.InternalServerError):
        client(kylon, key).chat.completions.create(model="error-500", messages=MESSAGES)


def test_invalid_json_is_400(kylon, agent_key, fake_openai):
    _, key = agent_key
    fake_openai.reset()
    r = httpx.post(kylon.url + "/proxy/openai/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   content=b"{not json")
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.headers["x-kylon-request-id"].startswith("req_")
    assert fake_openai.received == []


def test_body_over_the_limit_is_413(kylon, agent_key, fake_openai):
    _, key = agent_key
    fake_openai.reset()
    big = "x" * (1024 * 1024 + 10)
    with pytest.raises(openai.APIStatusError) as err:
        client(kylon, key).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": big}])
    assert err.value.status_code == 413
    assert fake_openai.received == []


def test_unknown_route_is_404(kylon, agent_key):
    _, key = agent_key
    r = httpx.post(kylon.url + "/proxy/openai/v1/nonexistent", headers={"Authorization": f"Bearer {key}"}, json={})
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(kylon.url + "/nothing-here")
    assert r.status_code == 404 and r.headers["x-kylon-request-id"]


def test_unconfigured_provider_is_503_naming_the_variable(make_kylon):
    k = make_kylon({"OPENAI_API_KEY": ""})
    _, key = k.agent_with_key("5")
    with pytest.raises(openai.APIStatusError) as err:
        client(k, key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert err.value.status_code == 503 and "OPENAI_API_KEY" in err.value.message


def test_unreachable_upstream_is_502(make_kylon):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    k = make_kylon({"KYLON_OPENAI_BASE_URL": f"http://127.0.0.1:{closed_port}"})
    _, key = k.agent_with_key("5")
    with pytest.raises(openai.APIStatusError) as err:
        client(k, key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert err.value.status_code == 502
    record = k.usage(err.value.response.headers["x-kylon-request-id"])
    assert record["status"] == "error" and record["http_status"] == 502


def test_upstream_timeout_is_504(make_kylon, fake_openai):
    k = make_kylon({"KYLON_UPSTREAM_TIMEOUT": "0.5"})
    _, key = k.agent_with_key("5")
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        client(k, key).chat.completions.create(model="slow-headers", messages=MESSAGES)
    assert err.value.status_code == 504 and time.monotonic() - started < 5
    assert fake_openai.wait_closed(fake_openai.last(), timeout=3) is not None


def test_operator_key_never_reaches_client_or_log(kylon, agent_key):
    _, key = agent_key
    raw = client(kylon, key).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert "sk-operator-openai-secret" not in str(raw.headers) + raw.text
    httpx.post(kylon.url + f"/proxy/openai/v1/chat/completions?key={key}", json={})
    time.sleep(0.1)
    log = kylon.read_log()
    assert "sk-operator-openai-secret" not in log
    assert key not in log


# -- health and metrics -------------------------------------------------------------


def test_healthz_and_metrics(kylon, agent_key):
    _, key = agent_key
    client(kylon, key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert httpx.get(kylon.url + "/healthz").json()["status"] == "ok"
    text = httpx.get(kylon.url + "/metrics").text
    for name in ("kylon_requests_total", "kylon_request_duration_seconds_bucket", "kylon_time_to_first_byte_seconds",
                 "kylon_active_streams", "kylon_client_disconnects_total", "kylon_upstream_errors_total",
                 "kylon_tokens_total", "kylon_credits_charged_total"):
        assert name in text
    assert 'kylon_requests_total{provider="openai",route="chat.completions",status_class="2xx"}' in text


# -- admin API (SPEC §10) -----------------------------------------------------------


def test_admin_api_calls(kylon):
    r = kylon.admin("POST", "/agents", json={"name": "bot", "skills": ["search"], "credits": "12.5"})
    assert r.status_code == 201
    agent = r.json()
    assert agent["name"] == "bot" and agent["skills"] == ["search"] and Decimal(agent["credits"]) == Decimal("12.5")
    got = kylon.admin("GET", f"/agents/{agent['id']}").json()
    assert got["id"] == agent["id"]
    patched = kylon.admin("PATCH", f"/agents/{agent['id']}", json={"skills": ["search", "elevenlabs"]}).json()
    assert patched["skills"] == ["elevenlabs", "search"]
    granted = kylon.admin("POST", f"/agents/{agent['id']}/credits", json={"amount": 2.25, "note": "top-up"}).json()
    assert Decimal(granted["credits"]) == Decimal("14.75")
    deducted = kylon.admin("POST", f"/agents/{agent['id']}/credits", json={"amount": "-0.75", "note": "fix"}).json()
    assert Decimal(deducted["credits"]) == Decimal("14")
    ledger = kylon.admin("GET", f"/agents/{agent['id']}/credits").json()["data"]
    assert [(Decimal(x["amount"]), Decimal(x["balance_after"]), x["note"]) for x in ledger] == [
        (Decimal("-0.75"), Decimal("14"), "fix"),
        (Decimal("2.25"), Decimal("14.75"), "top-up"),
        (Decimal("12.5"), Decimal("12.5"), "initial credits"),
    ]
    key = kylon.admin("POST", f"/agents/{agent['id']}/keys", json={"name": "ci"})
    assert key.status_code == 201 and set(key.json()) >= {"id", "key", "prefix"}
    assert kylon.admin("DELETE", f"/keys/{key.json()['id']}").json()["revoked_at"]
    usage = kylon.admin("GET", "/usage", params={"agent_id": agent["id"], "provider": "openai", "status": "completed",
                                                  "limit": 5})
    assert usage.status_code == 200 and usage.json()["data"] == []


def test_admin_api_refuses_bad_token_and_bad_input(kylon):
    r = httpx.get(kylon.url + "/admin/api/agents", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert kylon.admin("POST", "/agents", json={"name": "", "credits": 1}).status_code == 400
    assert kylon.admin("POST", "/agents", json={"name": "x", "credits": "abc"}).status_code == 400
    assert kylon.admin("GET", "/agents/999999").status_code == 404
    assert kylon.admin("POST", "/agents", content=b"[").status_code == 400


def test_answers_carry_a_current_date_header(kylon, agent_key):
    import email.utils

    _, key = agent_key
    for _ in range(2):  # Kylon's own answer and a relayed one
        raw = client(kylon, key).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        date = email.utils.parsedate_to_datetime(raw.headers["date"])
        assert abs(date.timestamp() - time.time()) < 3
        assert raw.headers["server"].startswith("TornadoServer/")
    missing = httpx.get(kylon.url + "/nowhere")
    assert missing.status_code == 404
    assert abs(email.utils.parsedate_to_datetime(missing.headers["date"]).timestamp() - time.time()) < 3
