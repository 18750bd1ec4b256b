"""GET /metrics (SPEC §11), scraped and parsed with prometheus_client's own
text parser: every family is there with its help text and a conventional
name, and a proxied call, a stream, a disconnect and an upstream error each
move their series (differences taken before and after)."""

import re
import time
from decimal import Decimal

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .fakes import openai_fake as fake_wire

MESSAGES = [{"role": "user", "content": "Say hi"}]
ROUTE = {"provider": "openai", "route": "chat.completions"}

# name (as the parser names the family) -> type. Counters' samples end in _total.
FAMILIES = {
    "kylon_requests": "counter",
    "kylon_request_duration_seconds": "histogram",
    "kylon_time_to_first_byte_seconds": "histogram",
    "kylon_active_streams": "gauge",
    "kylon_client_disconnects": "counter",
    "kylon_upstream_errors": "counter",
    "kylon_tokens": "counter",
    "kylon_units": "counter",
    "kylon_credits_charged": "counter",
    "kylon_rejected_requests": "counter",
    "kylon_usage_records_pending": "gauge",
    "kylon_usage_records_written": "counter",
    "kylon_usage_write_failures": "counter",
}
# Unbounded label values never become labels.
FORBIDDEN_LABELS = {"agent", "agent_id", "key", "key_id", "request_id", "agent_name"}


class Scrape:
    def __init__(self, kylon):
        answer = httpx.get(kylon.url + "/metrics", timeout=10)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        self.families = {f.name: f for f in text_string_to_metric_families(answer.text)}

    def value(self, name, **labels):
        """A sample's value; 0 when the series does not exist yet."""
        total = 0.0
        for family in self.families.values():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total


def moved(before, after, name, **labels):
    return after.value(name, **labels) - before.value(name, **labels)


def client(kylon, key):
    return openai.OpenAI(base_url=kylon.url + "/proxy/openai/v1", api_key=key, max_retries=0)


def test_every_family_with_help_and_a_conventional_name(kylon, agent_key):
    _, key = agent_key
    client(kylon, key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    scrape = Scrape(kylon)
    for name, kind in FAMILIES.items():
        family = scrape.families.get(name)
        assert family is not None, f"{name} is missing from /metrics"
        assert family.type == kind, (name, family.type)
        assert family.documentation.strip(), f"{name} has no help text"
    for family in scrape.families.values():
        if not family.name.startswith("kylon_"):
            continue
        assert re.fullmatch(r"kylon_[a-z][a-z0-9_]*", family.name)
        if family.type == "histogram":
            assert family.name.endswith("_seconds")
        for sample in family.samples:
            assert not FORBIDDEN_LABELS & set(sample.labels), sample
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name
            if family.type == "gauge":
                assert not sample.name.endswith("_total"), sample.name


def test_a_proxied_call_counts_request_latency_tokens_and_credits(kylon, fake_openai, agent_key):
    _, key = agent_key
    before = Scrape(kylon)
    raw = client(kylon, key).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    raw.parse()
    record = kylon.usage(raw.headers["x-kylon-request-id"])
    after = Scrape(kylon)

    assert moved(before, after, "kylon_requests_total", **ROUTE, status_class="2xx") == 1
    assert moved(before, after, "kylon_request_duration_seconds_count", **ROUTE) == 1
    assert moved(before, after, "kylon_time_to_first_byte_seconds_count", **ROUTE) == 1
    assert 0 < moved(before, after, "kylon_request_duration_seconds_sum", **ROUTE) < 10
    # The histogram's +Inf bucket counts every observation.
    assert moved(before, after, "kylon_request_duration_seconds_bucket", **ROUTE, le="+Inf") == 1
    model = {"provider": "openai", "model": "gpt-4o-mini"}
    assert moved(before, after, "kylon_tokens_total", **model, kind="input") == fake_wire.PROMPT_TOKENS
    assert moved(before, after, "kylon_tokens_total", **model, kind="cached_input") == fake_wire.CACHED_TOKENS
    assert moved(before, after, "kylon_tokens_total", **model, kind="output") == fake_wire.COMPLETION_TOKENS
    assert moved(before, after, "kylon_tokens_total", **model, kind="reasoning") == fake_wire.REASONING_TOKENS
    charged = moved(before, after, "kylon_credits_charged_total", **model)
    assert charged == pytest.approx(float(Decimal(record["credits"])), rel=1e-9) and charged > 0
    assert moved(before, after, "kylon_usage_records_written_total") >= 1
    assert moved(before, after, "kylon_upstream_errors_total") == 0
    assert moved(before, after, "kylon_client_disconnects_total") == 0


def test_a_stream_is_active_while_it_runs(kylon, fake_openai, agent_key):
    _, key = agent_key
    fake_openai.release.clear()
    before = Scrape(kylon)
    try:
        with client(kylon, key).chat.completions.with_streaming_response.create(
            model="held-stream", messages=MESSAGES, stream=True
        ) as response:
            request_id = response.headers["x-kylon-request-id"]
            chunks = iter(response.parse())
            next(chunks), next(chunks)  # the upstream now holds the rest back
            during = Scrape(kylon)
            assert moved(before, during, "kylon_active_streams", provider="openai") == 1
            assert moved(before, during, "kylon_requests_total", **ROUTE) == 0  # counted when it ends
            fake_openai.release.set()
            rest = list(chunks)
    finally:
        fake_openai.release.clear()
    assert "".join(c.choices[0].delta.content or "" for c in rest if c.choices)
    record = kylon.usage(request_id)
    assert record["status"] == "completed" and record["stream"] is True
    after = Scrape(kylon)
    assert moved(before, after, "kylon_active_streams", provider="openai") == 0
    assert moved(before, after, "kylon_requests_total", **ROUTE, status_class="2xx") == 1
    assert moved(before, after, "kylon_request_duration_seconds_count", **ROUTE) == 1
    assert moved(before, after, "kylon_time_to_first_byte_seconds_count", **ROUTE) == 1
    # held-stream has no price of its own: its tokens count under model "other".
    other = {"provider": "openai", "model": "other"}
    assert moved(before, after, "kylon_tokens_total", **other, kind="output") == fake_wire.COMPLETION_TOKENS
    assert moved(before, after, "kylon_credits_charged_total", **other) > 0
    assert moved(before, after, "kylon_client_disconnects_total") == 0


def test_a_client_disconnect_is_counted(kylon, fake_openai, agent_key):
    _, key = agent_key
    before = Scrape(kylon)
    with client(kylon, key).chat.completions.with_streaming_response.create(
        model="silent-stream", messages=MESSAGES, stream=True
    ) as response:
        request_id = response.headers["x-kylon-request-id"]
        next(iter(response.parse()))
        received = fake_openai.last()
        assert moved(before, Scrape(kylon), "kylon_active_streams", provider="openai") == 1
    # Leaving the block closed the connection mid-stream.
    assert fake_openai.wait_closed(received, timeout=5) is not None
    record = kylon.usage(request_id)
    assert record["status"] == "disconnected"
    after = Scrape(kylon)
    assert moved(before, after, "kylon_client_disconnects_total", **ROUTE) == 1
    assert moved(before, after, "kylon_active_streams", provider="openai") == 0
    assert moved(before, after, "kylon_request_duration_seconds_count", **ROUTE) == 1
    assert moved(before, after, "kylon_upstream_errors_total") == 0


def test_upstream_errors_are_counted_by_kind(kylon, fake_openai, agent_key):
    _, key = agent_key
    before = Scrape(kylon)
    with pytest.raises(openai.InternalServerError):
        client(kylon, key).chat.completions.create(model="error-500", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError):
        client(kylon, key).chat.completions.create(model="error-429", messages=MESSAGES)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and moved(before, Scrape(kylon), "kylon_requests_total", **ROUTE) < 2:
        time.sleep(0.02)
    after = Scrape(kylon)
    assert moved(before, after, "kylon_upstream_errors_total", **ROUTE, kind="http_5xx") == 1
    assert moved(before, after, "kylon_upstream_errors_total", **ROUTE, kind="http_4xx") == 1
    assert moved(before, after, "kylon_requests_total", **ROUTE, status_class="5xx") == 1
    assert moved(before, after, "kylon_requests_total", **ROUTE, status_class="4xx") == 1
    assert moved(before, after, "kylon_requests_total", **ROUTE, status_class="2xx") == 0
    assert moved(before, after, "kylon_tokens_total") == 0


def test_refused_calls_are_counted_by_reason(kylon, fake_openai):
    before = Scrape(kylon)
    with pytest.raises(openai.AuthenticationError):
        client(kylon, "pak_" + "x" * 43).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    agent, key = kylon.agent_with_key("0")
    with pytest.raises(openai.APIStatusError) as refused:
        client(kylon, key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert refused.value.status_code == 402
    after = Scrape(kylon)
    assert moved(before, after, "kylon_rejected_requests_total", provider="openai", reason="key") == 1
    assert moved(before, after, "kylon_rejected_requests_total", provider="openai", reason="credits") == 1
    assert moved(before, after, "kylon_upstream_errors_total") == 0
