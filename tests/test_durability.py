"""Nothing lost: a SIGKILL after answers completed, and a database that is
away for a while, cost no usage record and no debit — and none twice."""

import signal
import time
from decimal import Decimal

import openai
import pytest

from .test_openai_e2e import GPT_4O_MINI_CALL, MESSAGES


def test_sigkill_loses_no_completed_call(make_kylon):
    # Records wait 60 s for their batch: only the journal holds them at the kill.
    k = make_kylon({"KYLON_USAGE_FLUSH_SECONDS": "60"})
    agent, key = k.agent_with_key("1")
    client = openai.OpenAI(base_url=k.url + "/proxy/openai/v1", api_key=key, max_retries=0)
    ids = []
    for _ in range(5):
        ids.append(client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
                   .headers["x-kylon-request-id"])
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    ) as response:
        ids.append(response.headers["x-kylon-request-id"])
        list(response.parse())
    k.stop(signal.SIGKILL)
    assert k.proc.returncode == -signal.SIGKILL
    k.start()  # same port, database and journal directory
    for request_id in ids:
        assert k.usage(request_id)["status"] == "completed"
    assert k.balance(agent["id"]) == Decimal("1") - 6 * GPT_4O_MINI_CALL
    # A second restart replays nothing twice.
    k.stop(signal.SIGKILL)
    k.start()
    assert k.balance(agent["id"]) == Decimal("1") - 6 * GPT_4O_MINI_CALL
    assert len(k.usage_for_agent(agent["id"], 6)) == 6


def test_sigkill_after_the_last_event_before_the_transfer_ends_is_completed(make_kylon):
    """The SDK stops at [DONE]; the upstream ends its response 3 s later:
    killed in between, the call is recorded completed from its final usage."""
    k = make_kylon({"KYLON_USAGE_FLUSH_SECONDS": "60"})
    # Enough for the hold of an unpriced model (the fallback is OpenAI's dearest model).
    _, key = k.agent_with_key("10")
    client = openai.OpenAI(base_url=k.url + "/proxy/openai/v1", api_key=key, max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini-linger-after-done", messages=MESSAGES, stream=True
    ) as response:
        request_id = response.headers["x-kylon-request-id"]
        list(response.parse())
        k.stop(signal.SIGKILL)
    k.start()
    record = k.usage(request_id)
    assert (record["status"], record["estimated"], record["output_tokens"]) == ("completed", False, 12)


def test_database_away_for_30_seconds(make_kylon):
    """SQLite locked by another writer for 30 s: known keys keep working, the
    records wait and are written once when the database is back."""
    import sqlite3

    import httpx

    k = make_kylon({"KYLON_USAGE_FLUSH_SECONDS": "0.1"})
    agent, key = k.agent_with_key("1")
    client = openai.OpenAI(base_url=k.url + "/proxy/openai/v1", api_key=key, max_retries=0, timeout=30)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # the key is now cached
    k.usage_for_agent(agent["id"], 1)
    lock = sqlite3.connect(k.database_url.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    calls = 0
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            calls += 1
            time.sleep(0.5)
        failures = [line for line in httpx.get(k.url + "/metrics").text.splitlines()
                    if line.startswith("kylon_usage_write_failures_total ")]
        assert float(failures[0].split()[1]) >= 1
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    records = k.usage_for_agent(agent["id"], calls + 1, timeout=30)
    assert len(records) == calls + 1 == len({r["request_id"] for r in records})
    assert k.balance(agent["id"]) == Decimal("1") - (calls + 1) * GPT_4O_MINI_CALL


# -- an upstream that misbehaves ---------------------------------------------------

import httpx  # noqa: E402

from .fakes import openai_fake  # noqa: E402


def post_chat(k, key, model, stream=False, timeout=30):
    return httpx.post(k.url + "/proxy/openai/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": model, "messages": MESSAGES, "stream": stream}, timeout=timeout)


def test_garbage_sse_is_relayed_untouched_and_billed_as_estimated(kylon, agent_key):
    _, key = agent_key
    r = post_chat(kylon, key, "garbage-stream", stream=True)
    assert r.status_code == 200 and r.content == openai_fake.GARBAGE_STREAM
    record = kylon.usage(r.headers["x-kylon-request-id"])
    assert record["status"] == "completed" and record["estimated"] is True


@pytest.mark.parametrize("model", ["no-usage-stream", "no-usage-stream-linger-after-done"])
def test_stream_that_never_reports_usage_is_estimated(kylon, agent_key, model):
    # The lingering upstream keeps its answer open after [DONE]: the SDK has
    # closed by then, and the call is still complete.
    agent, key = agent_key
    stream = openai.OpenAI(base_url=kylon.url + "/proxy/openai/v1", api_key=key, max_retries=0) \
        .chat.completions.with_streaming_response.create(model=model, messages=MESSAGES, stream=True)
    with stream as response:
        chunks = list(response.parse())
        request_id = response.headers["x-kylon-request-id"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    record = kylon.usage(request_id)
    assert record["status"] == "completed" and record["estimated"] is True
    assert record["output_tokens"] == len(chunks) and record["input_tokens"] > 0
    assert kylon.balance(agent["id"]) == Decimal(100) - Decimal(record["credits"])


def test_ten_megabyte_error_body_passes_through(kylon, agent_key):
    agent, key = agent_key
    r = post_chat(kylon, key, "huge-error")
    assert r.status_code == 500 and r.content == openai_fake.HUGE_ERROR_BODY
    assert r.json()["error"]["type"] == "server_error"
    record = kylon.usage(r.headers["x-kylon-request-id"])
    assert record["status"] == "upstream_error" and record["http_status"] == 500 and record["credits"] == "0E-9"


def test_reset_before_headers_is_502(kylon, agent_key):
    _, key = agent_key
    r = post_chat(kylon, key, "reset-before-headers")
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"
    record = kylon.usage(r.headers["x-kylon-request-id"])
    assert record["status"] == "error" and record["http_status"] == 502 and record["error"]


def test_reset_mid_stream_ends_the_answer_and_is_recorded(kylon, agent_key):
    _, key = agent_key
    with httpx.stream("POST", kylon.url + "/proxy/openai/v1/chat/completions",
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": "reset-mid-stream", "messages": MESSAGES, "stream": True}, timeout=10) as r:
        request_id = r.headers["x-kylon-request-id"]
        try:
            body = b"".join(r.iter_raw())
        except httpx.HTTPError:
            body = b""
    assert b"[DONE]" not in body
    record = kylon.usage(request_id)
    assert record["status"] == "error" and record["estimated"] is True and record["output_tokens"] >= 1


# -- calls in flight at a SIGKILL ----------------------------------------------------

from .conftest import drop_database, scratch_database_url  # noqa: E402


def open_held_stream(client, key):
    """A streamed call held by the fake after its first words: (request id, stream)."""
    stream = client.stream("POST", "/proxy/openai/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                           json={"model": "held-stream", "messages": MESSAGES, "stream": True})
    response = stream.__enter__()
    assert response.status_code == 200
    seen = b""
    # The iterator is kept: a dropped one would close the connection.
    chunks = response.iter_raw()
    while b"Hello" not in seen:
        seen += next(chunks)
    return response.headers["x-kylon-request-id"], (stream, chunks)


@pytest.mark.parametrize("kind", ["sqlite", "mariadb"])
def test_sigkill_during_open_streams_records_each_once_as_interrupted(kind, make_kylon, fake_openai,
                                                                       tmp_path_factory):
    url = scratch_database_url(kind, tmp_path_factory)
    k = make_kylon(database_url=url)
    agent, key = k.agent_with_key("100")
    limits = httpx.Limits(max_connections=40, max_keepalive_connections=40)
    client = httpx.Client(base_url=k.url, limits=limits, timeout=10)
    fake_openai.release.clear()
    streams = []
    try:
        ids = []
        for _ in range(20):
            request_id, stream = open_held_stream(client, key)
            ids.append(request_id)
            streams.append(stream)
        time.sleep(1.5)  # a progress checkpoint with the words relayed so far
        k.stop(signal.SIGKILL)
    finally:
        fake_openai.release.set()
        for stream, _ in streams:
            try:
                stream.__exit__(None, None, None)
            except httpx.HTTPError:
                pass
        client.close()
    try:
        k.start()  # same port, database and journal directory
        records = [k.usage(request_id) for request_id in ids]
        for record in records:
            assert record["status"] == "interrupted" and record["estimated"] is True
            assert Decimal(record["credits"]) > 0 and record["input_tokens"] > 0 and record["output_tokens"] >= 1
        charged = sum(Decimal(r["credits"]) for r in records)
        assert k.balance(agent["id"]) == Decimal("100") - charged
        # A second restart records nothing twice.
        k.stop(signal.SIGKILL)
        k.start()
        time.sleep(0.5)
        assert len(k.usage_for_agent(agent["id"], 20)) == 20
        assert k.balance(agent["id"]) == Decimal("100") - charged
    finally:
        k.stop()
        drop_database(url)
