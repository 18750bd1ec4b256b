"""Nothing lost: a SIGKILL after answers completed, and a database that is
away for a while, cost no usage record and no debit — and none twice."""

import signal
import time
from decimal import Decimal

import openai

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
