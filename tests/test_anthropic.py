"""Anthropic Messages through Kylon, with the official `anthropic` SDK as the
client, on SQLite and on MariaDB (the `kylon` fixture)."""

import time
from decimal import Decimal

import anthropic
import httpx
import pytest

from .fakes import anthropic_fake as wire

MESSAGES = [{"role": "user", "content": "Say hi"}]
OPERATOR_KEY = "sk-ant-operator-anthropic-secret"
TEXT = "Hello from the fake upstream!"


def call_credits(input, cache_write, cache_read, output, input_tokens=wire.INPUT_TOKENS):
    """Credits for the fake's usage at a per-million price."""
    return (
        input_tokens * Decimal(input)
        + wire.CACHE_WRITE_TOKENS * Decimal(cache_write)
        + wire.CACHE_READ_TOKENS * Decimal(cache_read)
        + wire.OUTPUT_TOKENS * Decimal(output)
    ) / 1_000_000


# claude-sonnet-4-6: input 3, cache write 3.75, cache read 0.30, output 15 per 1M tokens.
SONNET_4_6_CALL = call_credits("3", "3.75", "0.30", "15")
# claude-haiku-4-5: input 1, cache write 1.25, cache read 0.10, output 5.
HAIKU_4_5_CALL = call_credits("1", "1.25", "0.10", "5")
ALL_INPUT = wire.INPUT_TOKENS + wire.CACHE_WRITE_TOKENS + wire.CACHE_READ_TOKENS


def client(kylon, key, **kwargs):
    return anthropic.Anthropic(base_url=kylon.url + "/proxy/anthropic", api_key=key, max_retries=0, **kwargs)


def create(kylon, key, model="claude-sonnet-4-6", **kwargs):
    return client(kylon, key).messages.with_raw_response.create(
        model=model, max_tokens=256, messages=MESSAGES, **kwargs
    )


def assert_upstream_call(received, key, path="/v1/messages"):
    assert received.method == "POST" and received.path == path
    assert received.headers["x-api-key"] == OPERATOR_KEY
    assert key not in received.everything()
    assert "authorization" not in received.headers


def assert_billed(kylon, agent, record):
    assert kylon.balance(agent["id"]) == Decimal("100") - Decimal(record["credits"])


@pytest.fixture(scope="session")
def fake_anthropic(fakes):
    return fakes["anthropic"]


# -- messages -------------------------------------------------------------------


def test_message(kylon, fake_anthropic, agent_key):
    agent, key = agent_key
    raw = create(kylon, key)
    message = raw.parse()
    assert message.content[0].text == TEXT and message.usage.cache_read_input_tokens == wire.CACHE_READ_TOKENS
    assert raw.headers["request-id"] == "req_fake_message"  # upstream's id passed back
    received = fake_anthropic.last()
    assert_upstream_call(received, key)
    assert received.headers["anthropic-version"] == raw.http_request.headers["anthropic-version"]

    record = kylon.usage(raw.headers["x-kylon-request-id"])
    assert record["status"] == "completed" and record["http_status"] == 200
    assert record["provider"] == "anthropic" and record["route"] == "messages"
    assert record["model"] == "claude-sonnet-4-6" and record["stream"] is False
    assert record["input_tokens"] == ALL_INPUT
    assert record["cached_input_tokens"] == wire.CACHE_READ_TOKENS
    assert record["cache_write_tokens"] == wire.CACHE_WRITE_TOKENS
    assert record["output_tokens"] == wire.OUTPUT_TOKENS
    assert record["estimated"] is False and record["fallback_price"] is False
    assert Decimal(record["credits"]) == SONNET_4_6_CALL
    assert_billed(kylon, agent, record)


def test_stream(kylon, fake_anthropic, agent_key):
    agent, key = agent_key
    with client(kylon, key).messages.with_streaming_response.create(
        model="claude-haiku-4-5-20251001", max_tokens=256, messages=MESSAGES, stream=True
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        request_id = response.headers["x-kylon-request-id"]
        events = list(response.parse())
    types = [e.type for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop" and "message_delta" in types
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == TEXT
    assert_upstream_call(fake_anthropic.last(), key)

    record = kylon.usage(request_id)
    assert record["stream"] is True and record["status"] == "completed"
    assert record["input_tokens"] == ALL_INPUT and record["cached_input_tokens"] == wire.CACHE_READ_TOKENS
    assert record["cache_write_tokens"] == wire.CACHE_WRITE_TOKENS
    assert record["output_tokens"] == wire.OUTPUT_TOKENS and record["estimated"] is False
    # A dated snapshot is priced as its model.
    assert record["fallback_price"] is False and Decimal(record["credits"]) == HAIKU_4_5_CALL
    assert_billed(kylon, agent, record)


def test_stream_is_relayed_untouched_pings_included(kylon, agent_key):
    _, key = agent_key
    with httpx.stream(
        "POST",
        kylon.url + "/proxy/anthropic/v1/messages",
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        json={"model": "claude-sonnet-4-6", "max_tokens": 256, "messages": MESSAGES, "stream": True},
    ) as r:
        body = r.read().decode()
    assert "event: ping\ndata: {\"type\": \"ping\"}\n\n" in body
    assert body.count("event: content_block_delta") == len(wire.WORDS)


def test_stream_helper_final_message(kylon, agent_key):
    _, key = agent_key
    with client(kylon, key).messages.stream(model="claude-sonnet-4-6", max_tokens=256, messages=MESSAGES) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == TEXT and final.usage.output_tokens == wire.OUTPUT_TOKENS


def test_last_message_delta_wins_and_its_input_figures_supersede(kylon, agent_key):
    """Cumulative counts: output 5 then 12 is 12, never 17; input_tokens 11 replaces 10."""
    agent, key = agent_key
    with client(kylon, key).messages.with_streaming_response.create(
        model="revised-usage", max_tokens=256, messages=MESSAGES, stream=True
    ) as response:
        request_id = response.headers["x-kylon-request-id"]
        list(response.parse())
    record = kylon.usage(request_id)
    assert record["output_tokens"] == wire.OUTPUT_TOKENS
    assert record["input_tokens"] == wire.REVISED_INPUT_TOKENS + wire.CACHE_WRITE_TOKENS + wire.CACHE_READ_TOKENS
    assert record["estimated"] is False and record["fallback_price"] is True
    # An unknown model pays the fallback price (claude-opus-4-1's: 15, 18.75, 1.50, 75).
    expected = call_credits("15", "18.75", "1.50", "75", input_tokens=wire.REVISED_INPUT_TOKENS)
    assert Decimal(record["credits"]) == expected
    assert_billed(kylon, agent, record)


def test_error_event_mid_stream(kylon, agent_key):
    """The SDK raises on `event: error`; Kylon bills what it saw, marked estimated."""
    agent, key = agent_key
    stream = client(kylon, key).messages.create(
        model="error-mid-stream", max_tokens=256, messages=MESSAGES, stream=True
    )
    request_id = stream.response.headers["x-kylon-request-id"]
    with pytest.raises(anthropic.APIStatusError) as err:
        list(stream)
    assert err.value.body["error"]["type"] == "overloaded_error"
    record = kylon.usage(request_id)
    assert record["input_tokens"] == ALL_INPUT and record["output_tokens"] == 2  # two deltas
    assert record["estimated"] is True
    assert record["status"] == "upstream_error" and record["http_status"] == 200 and record["error"]
    assert_billed(kylon, agent, record)


def test_disconnect_mid_stream_stops_the_upstream(kylon, fake_anthropic, agent_key):
    """The upstream sends one delta and then nothing for 30 s; the client leaves."""
    agent, key = agent_key
    with client(kylon, key).messages.with_streaming_response.create(
        model="silent-stream", max_tokens=256, messages=MESSAGES, stream=True
    ) as response:
        request_id = response.headers["x-kylon-request-id"]
        events = iter(response.parse())
        while next(events).type != "content_block_delta":
            pass
        received = fake_anthropic.last()
        left_at = time.monotonic()
        response.close()
    closed_at = fake_anthropic.wait_closed(received, timeout=5)
    assert closed_at is not None, "the upstream connection was never closed"
    assert closed_at - left_at < 1.5
    record = kylon.usage(request_id)
    assert record["status"] == "disconnected" and record["estimated"] is True
    # Input and cache figures from message_start; output: the one delta seen.
    assert record["input_tokens"] == ALL_INPUT and record["cached_input_tokens"] == wire.CACHE_READ_TOKENS
    assert record["output_tokens"] == 1
    assert Decimal(record["credits"]) > 0
    assert_billed(kylon, agent, record)


# -- token counting, betas, headers ---------------------------------------------------


def test_count_tokens_is_free(kylon, fake_anthropic, agent_key):
    agent, key = agent_key
    raw = client(kylon, key).messages.with_raw_response.count_tokens(model="claude-sonnet-4-6", messages=MESSAGES)
    assert raw.parse().input_tokens == wire.COUNTED_TOKENS
    assert_upstream_call(fake_anthropic.last(), key, path="/v1/messages/count_tokens")
    record = kylon.usage(raw.headers["x-kylon-request-id"])
    assert record["route"] == "messages.count_tokens" and record["status"] == "completed"
    assert Decimal(record["credits"]) == 0 and record["estimated"] is False
    assert kylon.balance(agent["id"]) == Decimal("100")


def test_beta_query_and_header_are_forwarded(kylon, fake_anthropic, agent_key):
    _, key = agent_key
    message = client(kylon, key).beta.messages.create(
        model="claude-sonnet-4-6", max_tokens=256, messages=MESSAGES, betas=["context-management-2025-06-27"]
    )
    assert message.content[0].text == TEXT
    received = fake_anthropic.last()
    assert_upstream_call(received, key)
    assert received.headers["anthropic-beta"] == "context-management-2025-06-27"
    # Earlier SDKs mark beta calls with ?beta=true.
    r = httpx.post(kylon.url + "/proxy/anthropic/v1/messages?beta=true", headers={"x-api-key": key},
                   json={"model": "claude-sonnet-4-6", "max_tokens": 256, "messages": MESSAGES})
    assert r.status_code == 200 and fake_anthropic.last().query == "beta=true"


def test_key_in_x_api_key_and_default_anthropic_version(kylon, fake_anthropic, agent_key):
    """Older SDKs send x-api-key; a client without anthropic-version gets the default."""
    _, key = agent_key
    r = httpx.post(kylon.url + "/proxy/anthropic/v1/messages", headers={"x-api-key": key},
                   json={"model": "claude-sonnet-4-6", "max_tokens": 256, "messages": MESSAGES})
    assert r.status_code == 200 and r.json()["type"] == "message"
    received = fake_anthropic.last()
    assert_upstream_call(received, key)
    assert received.headers["anthropic-version"] == "2023-06-01"


def test_client_anthropic_version_is_kept(kylon, fake_anthropic, agent_key):
    _, key = agent_key
    create(kylon, key, extra_headers={"anthropic-version": "2024-01-01"})
    assert fake_anthropic.last().headers["anthropic-version"] == "2024-01-01"


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, status, exception, err_type",
    [
        ("error-429", 429, anthropic.RateLimitError, "rate_limit_error"),
        ("error-529", 529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_upstream_errors_pass_through(kylon, agent_key, model, status, exception, err_type):
    agent, key = agent_key
    with pytest.raises(exception) as err:
        create(kylon, key, model=model)
    assert err.value.status_code == status and err.value.body["error"]["type"] == err_type
    assert err.value.response.headers["request-id"] == "req_fake_error"
    record = kylon.usage(err.value.response.headers["x-kylon-request-id"])
    assert record["status"] == "upstream_error" and record["http_status"] == status
    assert kylon.balance(agent["id"]) == Decimal("100")


@pytest.mark.parametrize("problem", ["missing", "unknown", "revoked"])
def test_bad_keys_get_401_in_anthropic_shape(kylon, fake_anthropic, problem):
    key = kylon.bad_key(problem)
    fake_anthropic.reset()
    with pytest.raises(anthropic.AuthenticationError) as err:
        create(kylon, key or "none")
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "authentication_error"
    assert "Kylon API key" in err.value.body["error"]["message"]
    assert err.value.response.headers["x-kylon-request-id"].startswith("req_")
    assert fake_anthropic.received == []


def test_no_credits_is_402_in_anthropic_shape(kylon, fake_anthropic):
    _, key = kylon.agent_with_key("0")
    fake_anthropic.reset()
    with pytest.raises(anthropic.PaymentRequiredError) as err:
        create(kylon, key)
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "billing_error"
    assert fake_anthropic.received == []


def test_invalid_json_is_400_in_anthropic_shape(kylon, fake_anthropic, agent_key):
    _, key = agent_key
    fake_anthropic.reset()
    r = httpx.post(kylon.url + "/proxy/anthropic/v1/messages", headers={"x-api-key": key}, content=b"{oops")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert fake_anthropic.received == []


def test_gate_is_403_permission_error(make_kylon, fake_anthropic):
    k = make_kylon()
    assert k.admin("PUT", "/gates", json={"provider": "anthropic", "route": "", "skill": "claude"}).status_code == 200
    _, key = k.agent_with_key("5")
    fake_anthropic.reset()
    deadline = time.monotonic() + 5  # the gate reaches the key cache within its refresh period
    while True:
        try:
            create(k, key)
        except anthropic.PermissionDeniedError as err:
            assert "claude" in err.body["error"]["message"]
            break
        assert time.monotonic() < deadline, "the gate never applied"
        time.sleep(0.1)
    calls_before = len(fake_anthropic.received)
    with pytest.raises(anthropic.PermissionDeniedError):
        create(k, key)
    assert len(fake_anthropic.received) == calls_before


def test_unconfigured_is_503_naming_the_variable(make_kylon):
    k = make_kylon({"ANTHROPIC_API_KEY": ""})
    _, key = k.agent_with_key("5")
    with pytest.raises(anthropic.ServiceUnavailableError) as err:
        create(k, key)
    assert "ANTHROPIC_API_KEY" in err.value.body["error"]["message"]


def test_operator_key_never_reaches_client_or_log(kylon, agent_key):
    _, key = agent_key
    raw = create(kylon, key)
    assert OPERATOR_KEY not in str(raw.headers) + raw.http_response.text
    time.sleep(0.1)
    log = kylon.read_log()
    assert OPERATOR_KEY not in log and key not in log
