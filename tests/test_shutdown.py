"""SIGTERM: stop accepting, let open streams finish within the grace period,
cut the rest (recorded as interrupted), write every record, exit 0."""

import time

import httpx
import openai
import pytest

from kylon.models import UsageRecord, database, open_database


def records(url):
    open_database(url)
    try:
        return {r.request_id: r for r in UsageRecord.select()}
    finally:
        database.close()


def streamed_call(k, key, model):
    """A streamed chat completion through Kylon `k` (a context manager)."""
    client = openai.OpenAI(base_url=k.url + "/proxy/openai/v1", api_key=key, max_retries=0)
    return client.chat.completions.with_streaming_response.create(
        model=model, messages=[{"role": "user", "content": "b"}], stream=True
    )


def test_sigterm_lets_streams_finish_and_flushes_every_record(make_kylon, fake_openai):
    k = make_kylon({"KYLON_SHUTDOWN_GRACE_SECONDS": "10", "KYLON_USAGE_FLUSH_SECONDS": "30"})
    _, key = k.agent_with_key("10")
    client = openai.OpenAI(base_url=k.url + "/proxy/openai/v1", api_key=key, max_retries=0)
    # A finished call whose record is still waiting in the batch (flush every 30 s).
    done = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "a"}])
    fake_openai.release.clear()
    try:
        stream = client.chat.completions.with_streaming_response.create(
            model="held-stream", messages=[{"role": "user", "content": "b"}], stream=True
        )
        with stream as response:
            stream_id = response.headers["x-kylon-request-id"]
            chunks = iter(response.parse())
            next(chunks)
            k.proc.send_signal(15)
            time.sleep(0.5)
            # No new connections while draining.
            try:
                httpx.get(k.url + "/healthz", timeout=1)
                accepting = True
            except httpx.HTTPError:
                accepting = False
            assert not accepting
            assert k.proc.poll() is None, "exited while a stream was open"
            fake_openai.release.set()
            rest = list(chunks)
        assert rest[-1].choices[0].finish_reason == "stop"
    finally:
        fake_openai.release.set()
    assert k.proc.wait(15) == 0
    rows = records(k.database_url)
    assert rows[done.headers["x-kylon-request-id"]].status == "completed"
    assert rows[stream_id].status == "completed" and rows[stream_id].output_tokens == 12


def test_streams_past_the_grace_period_are_cut_and_recorded(make_kylon, fake_openai):
    k = make_kylon({"KYLON_SHUTDOWN_GRACE_SECONDS": "0.5"})
    _, key = k.agent_with_key("10")
    with streamed_call(k, key, "silent-stream") as response:
        stream_id = response.headers["x-kylon-request-id"]
        next(iter(response.parse()))
        received = fake_openai.last()
        k.proc.send_signal(15)
        assert k.proc.wait(15) == 0
    assert received.closed_at is not None
    row = records(k.database_url)[stream_id]
    assert row.status == "interrupted" and row.estimated


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_either_event_loop_relays_a_stream_and_stops_cleanly(make_kylon, loop):
    k = make_kylon({"KYLON_EVENT_LOOP": loop})
    assert f"event loop {loop}" in k.read_log()
    _, key = k.agent_with_key("10")
    with streamed_call(k, key, "gpt-4o-mini") as response:
        request_id = response.headers["x-kylon-request-id"]
        chunks = list(response.parse())
    assert chunks[-1].choices[0].finish_reason == "stop"
    k.proc.send_signal(15)
    assert k.proc.wait(15) == 0
    assert records(k.database_url)[request_id].status == "completed"
