"""Cerebras through Kylon (`/proxy/cerebras`), with the official
`cerebras-cloud-sdk` as the client, on SQLite and on MariaDB (the `kylon`
fixture)."""

import time
from decimal import Decimal

import pytest
from cerebras.cloud import sdk as cerebras

from .fakes import cerebras_fake as wire

OPERATOR_KEY = "csk-operator-cerebras-secret"
MESSAGES = [{"role": "user", "content": "Hello!"}]
# llama-3.3-70b per 1M tokens: input 0.85, output 1.20 (no cached-input discount).
LLAMA_70B_CALL = (wire.PROMPT_TOKENS * Decimal("0.85") + wire.COMPLETION_TOKENS * Decimal("1.20")) / 1_000_000


@pytest.fixture(scope="session")
def fake_cerebras(fakes):
    return fakes["cerebras"]


def client(kylon, key, **kwargs):
    return cerebras.Cerebras(base_url=kylon.url + "/proxy/cerebras", api_key=key, max_retries=0, **kwargs)


def assert_operator_key_only(received, key):
    received.assert_only_operator_credential("authorization", f"Bearer {OPERATOR_KEY}")


def test_the_sdk_warm_up_passes_through_free(kylon, fake_cerebras, agent_key):
    agent, key = agent_key
    fake_cerebras.reset()
    client(kylon, key)
    [warm_up] = fake_cerebras.received
    assert warm_up.method == "GET" and warm_up.path == "/v1/tcp_warming"
    assert_operator_key_only(warm_up, key)
    [record] = kylon.usage_for_agent(agent["id"], 1)
    assert record["route"] == "tcp_warming" and record["status"] == "completed" and record["http_status"] == 200
    assert Decimal(record["credits"]) == 0 and record["estimated"] is False and record["fallback_price"] is False
    assert kylon.balance(agent["id"]) == Decimal("100")


def test_a_refused_warm_up_does_not_break_the_client(kylon, fake_cerebras):
    fake_cerebras.reset()
    c = client(kylon, "pak_" + "x" * 43)  # unknown key: the warm-up gets 401, silently
    with pytest.raises(cerebras.AuthenticationError):
        c.chat.completions.create(model="llama-3.3-70b", messages=MESSAGES)
    assert fake_cerebras.received == []


def test_chat_completion(kylon, fake_cerebras, agent_key):
    agent, key = agent_key
    raw = client(kylon, key).chat.completions.with_raw_response.create(model="llama-3.3-70b", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from Cerebras!"
    assert completion.time_info.total_time == pytest.approx(0.0084)
    received = fake_cerebras.last()
    assert received.method == "POST" and received.path == "/v1/chat/completions"
    assert_operator_key_only(received, key)
    record = kylon.usage(raw.headers["x-kylon-request-id"])
    assert record["provider"] == "cerebras" and record["route"] == "chat.completions"
    assert record["model"] == "llama-3.3-70b" and record["status"] == "completed" and record["stream"] is False
    assert record["input_tokens"] == wire.PROMPT_TOKENS and record["cached_input_tokens"] == wire.CACHED_TOKENS
    assert record["output_tokens"] == wire.COMPLETION_TOKENS
    assert record["estimated"] is False and record["fallback_price"] is False
    assert Decimal(record["credits"]) == LLAMA_70B_CALL
    # The warm-up is free: the balance drops by the call alone.
    assert kylon.balance(agent["id"]) == Decimal("100") - LLAMA_70B_CALL


def test_stream_usage_comes_from_the_finish_reason_chunk(kylon, fake_cerebras, agent_key):
    agent, key = agent_key
    stream = client(kylon, key).chat.completions.create(model="gpt-oss-120b", messages=MESSAGES, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from Cerebras!"
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage.total_tokens == 56
    sent = fake_cerebras.last()
    assert b'"include_usage": true' in sent.body
    [record] = [r for r in kylon.usage_for_agent(agent["id"], 2) if r["route"] == "chat.completions"]
    assert record["stream"] is True and record["status"] == "completed" and record["estimated"] is False
    assert record["input_tokens"] == wire.PROMPT_TOKENS and record["output_tokens"] == wire.COMPLETION_TOKENS
    expected = (wire.PROMPT_TOKENS * Decimal("0.35") + wire.COMPLETION_TOKENS * Decimal("0.75")) / 1_000_000
    assert Decimal(record["credits"]) == expected
    assert kylon.balance(agent["id"]) == Decimal("100") - expected


def test_disconnect_mid_stream_closes_upstream(kylon, fake_cerebras, agent_key):
    agent, key = agent_key
    with client(kylon, key).chat.completions.with_streaming_response.create(
        model="silent-stream", messages=MESSAGES, stream=True
    ) as response:
        request_id = response.headers["x-kylon-request-id"]
        next(iter(response.parse()))
        received = fake_cerebras.last()
        left_at = time.monotonic()
        response.close()
    closed_at = fake_cerebras.wait_closed(received, timeout=5)
    assert closed_at is not None and closed_at - left_at < 1.5
    record = kylon.usage(request_id)
    assert record["status"] == "disconnected" and record["estimated"] is True
    assert record["input_tokens"] > 0 and record["output_tokens"] >= 1 and record["fallback_price"] is True
    assert Decimal(record["credits"]) > 0
    assert kylon.balance(agent["id"]) == Decimal("100") - Decimal(record["credits"])


def test_error_chunk_mid_stream_raises_and_is_recorded(kylon, agent_key):
    agent, key = agent_key
    stream = client(kylon, key).chat.completions.create(model="stream-error", messages=MESSAGES, stream=True)
    with pytest.raises(cerebras.APIStatusError) as err:
        list(stream)
    assert err.value.message == "Internal server error"
    [record] = [r for r in kylon.usage_for_agent(agent["id"], 2) if r["route"] == "chat.completions"]
    assert record["estimated"] is True and record["output_tokens"] >= 2
    assert record["status"] == "upstream_error" and record["error"] == "Internal server error"
    assert kylon.balance(agent["id"]) == Decimal("100") - Decimal(record["credits"])


@pytest.mark.parametrize(
    "model, error, status",
    [("error-429", cerebras.RateLimitError, 429), ("error-400", cerebras.BadRequestError, 400),
     ("error-402", cerebras.APIStatusError, 402)],
)
def test_upstream_errors_pass_through(kylon, agent_key, model, error, status):
    agent, key = agent_key
    with pytest.raises(error) as err:
        client(kylon, key).chat.completions.create(model=model, messages=MESSAGES)
    assert err.value.status_code == status and err.value.body["code"]
    record = kylon.usage(err.value.response.headers["x-kylon-request-id"])
    assert record["status"] == "upstream_error" and record["http_status"] == status
    assert kylon.balance(agent["id"]) == Decimal("100")


def test_unknown_model_is_charged_the_fallback_price_and_flagged(kylon, agent_key):
    _, key = agent_key
    raw = client(kylon, key).chat.completions.with_raw_response.create(model="brand-new-model", messages=MESSAGES)
    record = kylon.usage(raw.headers["x-kylon-request-id"])
    assert record["fallback_price"] is True
    # The dearest current Cerebras model (qwen-3.8-27b): 0.99 input, 1.49 output.
    expected = (wire.PROMPT_TOKENS * Decimal("0.99") + wire.COMPLETION_TOKENS * Decimal("1.49")) / 1_000_000
    assert Decimal(record["credits"]) == expected


def test_no_credits_is_402_in_the_sdk(kylon, fake_cerebras):
    _, key = kylon.agent_with_key("0")
    fake_cerebras.reset()
    with pytest.raises(cerebras.APIStatusError) as err:
        client(kylon, key, warm_tcp_connection=False).chat.completions.create(model="llama3.1-8b", messages=MESSAGES)
    assert err.value.status_code == 402
    assert fake_cerebras.received == []
