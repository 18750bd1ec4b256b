"""OpenRouter through Kylon (`/proxy/openrouter/v1` → `/api/v1` upstream), with
the official `openai` SDK as the client, on SQLite and on MariaDB (the `kylon`
fixture): billed from OpenRouter's reported cost, keep-alive comments,
mid-stream errors, attribution headers."""

import time
from decimal import Decimal

import httpx
import openai
import pytest

from .fakes import openrouter_fake as wire

OPERATOR_KEY = "sk-or-v1-operator-openrouter-secret"
MESSAGES = [{"role": "user", "content": "Hi"}]
TEXT = "".join(wire.WORDS)


@pytest.fixture(scope="session")
def fake_openrouter(fakes):
    return fakes["openrouter"]


def client(kylon, key, **kwargs):
    return openai.OpenAI(base_url=kylon.url + "/proxy/openrouter/v1", api_key=key, max_retries=0, **kwargs)


def assert_operator_key_only(received, key):
    received.assert_only_operator_credential("authorization", f"Bearer {OPERATOR_KEY}")


def test_completion_is_billed_the_reported_cost(kylon, fake_openrouter, agent_key):
    agent, key = agent_key
    raw = client(kylon, key).chat.completions.with_raw_response.create(model="moonshotai/kimi-k2", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == TEXT
    assert raw.headers["x-generation-id"] == "gen-fake-1"
    received = fake_openrouter.last()
    assert received.method == "POST" and received.path == "/api/v1/chat/completions"
    assert_operator_key_only(received, key)
    record = kylon.usage(raw.headers["x-kylon-request-id"])
    assert record["provider"] == "openrouter" and record["route"] == "chat.completions"
    assert record["model"] == "moonshotai/kimi-k2" and record["status"] == "completed" and record["stream"] is False
    assert record["input_tokens"] == wire.PROMPT_TOKENS and record["cached_input_tokens"] == wire.CACHED_TOKENS
    assert record["output_tokens"] == wire.COMPLETION_TOKENS and record["reasoning_tokens"] == wire.REASONING_TOKENS
    assert Decimal(record["credits"]) == Decimal(wire.COST)
    assert record["estimated"] is False and record["fallback_price"] is False
    assert kylon.balance(agent["id"]) == Decimal("100") - Decimal(wire.COST)


def test_stream_with_keep_alive_comments(kylon, fake_openrouter, agent_key):
    agent, key = agent_key
    with client(kylon, key).chat.completions.with_streaming_response.create(
        model="moonshotai/kimi-k2", messages=MESSAGES, stream=True
    ) as response:
        assert response.headers["x-accel-buffering"] == "no"
        request_id = response.headers["x-kylon-request-id"]
        chunks = list(response.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT
    assert chunks[-1].usage.total_tokens == wire.PROMPT_TOKENS + wire.COMPLETION_TOKENS
    assert b"stream_options" not in fake_openrouter.last().body  # usage always comes: nothing to ask
    record = kylon.usage(request_id)
    assert record["stream"] is True and record["status"] == "completed" and record["estimated"] is False
    assert record["output_tokens"] == wire.COMPLETION_TOKENS
    assert Decimal(record["credits"]) == Decimal(wire.COST)
    assert kylon.balance(agent["id"]) == Decimal("100") - Decimal(wire.COST)


def test_comment_lines_reach_the_client_untouched(kylon, agent_key):
    _, key = agent_key
    with httpx.stream("POST", kylon.url + "/proxy/openrouter/v1/chat/completions",
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": "moonshotai/kimi-k2", "messages": MESSAGES, "stream": True}) as r:
        body = r.read().decode()
    assert body.startswith(wire.KEEP_ALIVE) and body.count(wire.KEEP_ALIVE) == 2
    assert body.endswith("data: [DONE]\n\n")


def test_byok_call_is_billed_fee_plus_upstream_cost(kylon, agent_key):
    agent, key = agent_key
    stream = client(kylon, key).chat.completions.create(model="byok/openai/gpt-4o", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == TEXT
    [record] = kylon.usage_for_agent(agent["id"], 1)
    expected = Decimal(wire.BYOK_FEE) + Decimal(wire.BYOK_UPSTREAM)
    assert Decimal(record["credits"]) == expected and record["fallback_price"] is False
    assert kylon.balance(agent["id"]) == Decimal("100") - expected


@pytest.mark.parametrize("stream", [False, True])
def test_without_a_reported_cost_the_tokens_are_priced(kylon, agent_key, stream):
    """`no-cost` is not in the table either: the fallback price, flagged."""
    agent, key = agent_key
    result = client(kylon, key).chat.completions.create(model="no-cost", messages=MESSAGES, stream=stream)
    if stream:
        list(result)
    [record] = kylon.usage_for_agent(agent["id"], 1)
    # The dearest current model of OpenRouter's table (openai/o1-pro): 150 input, 600 output.
    expected = (wire.PROMPT_TOKENS * Decimal("150") + wire.COMPLETION_TOKENS * Decimal("600")) / 1_000_000
    assert Decimal(record["credits"]) == expected and record["fallback_price"] is True
    assert kylon.balance(agent["id"]) == Decimal("100") - expected


def test_mid_stream_error_chunk(kylon, agent_key):
    agent, key = agent_key
    stream = client(kylon, key).chat.completions.create(model="mid-stream-error", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            received.append(chunk)
    assert err.value.message == "Provider returned error" and err.value.body["code"] == 502
    assert "".join(c.choices[0].delta.content or "" for c in received) == "Hi there"
    [record] = kylon.usage_for_agent(agent["id"], 1)
    # No usage came: what was streamed, estimated.
    assert record["estimated"] is True and record["output_tokens"] >= 2 and record["input_tokens"] > 0
    assert record["status"] == "upstream_error" and record["error"] == "Provider returned error"
    assert kylon.balance(agent["id"]) == Decimal("100") - Decimal(record["credits"])


def test_client_leaving_at_an_error_chunk_is_an_upstream_error(kylon, agent_key):
    # The SDK raises at the error chunk and closes while the upstream has not
    # ended its answer yet: still an upstream error, not a disconnect.
    agent, key = agent_key
    stream = client(kylon, key).chat.completions.create(model="mid-stream-error-linger", messages=MESSAGES,
                                                        stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    stream.close()
    [record] = kylon.usage_for_agent(agent["id"], 1)
    assert record["status"] == "upstream_error" and record["error"] == "Provider returned error"
    assert record["estimated"] is True and record["output_tokens"] >= 2
    assert kylon.balance(agent["id"]) == Decimal("100") - Decimal(record["credits"])


def test_disconnect_mid_stream_closes_upstream(kylon, fake_openrouter, agent_key):
    agent, key = agent_key
    with client(kylon, key).chat.completions.with_streaming_response.create(
        model="silent-stream", messages=MESSAGES, stream=True
    ) as response:
        request_id = response.headers["x-kylon-request-id"]
        next(iter(response.parse()))
        received = fake_openrouter.last()
        left_at = time.monotonic()
        response.close()
    closed_at = fake_openrouter.wait_closed(received, timeout=5)
    assert closed_at is not None and closed_at - left_at < 1.5
    record = kylon.usage(request_id)
    assert record["status"] == "disconnected" and record["estimated"] is True
    assert record["output_tokens"] >= 1 and Decimal(record["credits"]) > 0
    assert kylon.balance(agent["id"]) == Decimal("100") - Decimal(record["credits"])


@pytest.mark.parametrize(
    "model, error, status",
    [("error-402", openai.APIStatusError, 402), ("error-429", openai.RateLimitError, 429),
     ("error-400", openai.BadRequestError, 400)],
)
def test_errors_pass_through_in_openrouter_shape(kylon, agent_key, model, error, status):
    agent, key = agent_key
    with pytest.raises(error) as err:
        client(kylon, key).chat.completions.create(model=model, messages=MESSAGES)
    assert err.value.status_code == status
    assert err.value.body["code"] == status and err.value.body["message"]
    if status == 429:
        assert err.value.response.headers["retry-after"] == "1"
    record = kylon.usage(err.value.response.headers["x-kylon-request-id"])
    assert record["status"] == "upstream_error" and record["http_status"] == status
    assert kylon.balance(agent["id"]) == Decimal("100")


def test_operator_attribution_replaces_the_clients(kylon, fake_openrouter, agent_key):
    _, key = agent_key
    client(kylon, key, default_headers={"HTTP-Referer": "https://agent.example", "X-Title": "Agent"}).chat.completions.create(
        model="moonshotai/kimi-k2", messages=MESSAGES
    )
    headers = fake_openrouter.last().headers
    assert headers["http-referer"] == "https://gateway.example"
    assert headers["x-title"] == "Kylon Gateway" and headers["x-openrouter-title"] == "Kylon Gateway"


def test_client_attribution_passes_when_the_operator_set_none(make_kylon, fake_openrouter):
    k = make_kylon({"KYLON_OPENROUTER_REFERER": "", "KYLON_OPENROUTER_TITLE": ""})
    _, key = k.agent_with_key("5")
    client(k, key, default_headers={"HTTP-Referer": "https://agent.example", "X-OpenRouter-Title": "Agent"}).chat.completions.create(
        model="moonshotai/kimi-k2", messages=MESSAGES
    )
    received = fake_openrouter.last()
    assert received.headers["http-referer"] == "https://agent.example"
    assert received.headers["x-openrouter-title"] == "Agent" and "x-title" not in received.headers
    assert_operator_key_only(received, key)
