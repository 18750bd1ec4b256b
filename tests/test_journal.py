"""The journal's open calls directly: an open line per admitted call, progress
lines only when progress changed, closing by the final record, open calls
surviving the record segments' rotation and the open-call file's compaction,
and the `interrupted` records built from what a killed process left."""

import datetime
import json
from decimal import Decimal

import pytest

from kylon import journal as journal_module
from kylon.auth import AgentEntry, KeyEntry
from kylon.billing import Price, PriceBook, Usage
from kylon.calls.record import CallState
from kylon.calls.recovery import open_entry, progress_of, recovered_records
from kylon.journal import Journal
from kylon.providers import Exchange
from kylon.providers.openai import provider as OPENAI

BOOK = PriceBook(defaults={"openai": {"gpt-4o-mini": Price.of(input="0.15", output="0.60")}},
                 fallbacks={"openai": Price.of(input="5", output="20")})


def admitted(journal, request_id, request_bytes=400, agent_id=3):
    """A streamed chat call, journaled as open (as UsageWriter.open_call does)."""
    route, _ = OPENAI.match("/v1/chat/completions", "POST")
    exchange = Exchange(request_id=request_id, route=route, path="/v1/chat/completions", model="gpt-4o-mini",
                        stream=True, request_bytes=request_bytes)
    call = CallState(request_id, OPENAI, KeyEntry(7, 3, None, False), AgentEntry(agent_id, "bot", frozenset(), Decimal(1)),
                     exchange, datetime.datetime(2026, 12, 2, 8, 0), 0.0, None, held=Decimal("0.01"))
    journal.calls.open(call, open_entry(call))
    return call


def lines(journal):
    return [json.loads(line) for path in journal.calls.files() for line in open(path, "rb")]


def test_progress_is_written_only_when_it_changed(tmp_path):
    journal = Journal(str(tmp_path), "usage-h-1")
    call = admitted(journal, "req_a")
    journal.calls.checkpoint(progress_of)  # nothing relayed yet: no line
    assert [entry[0] for entry in lines(journal)] == ["open"]
    call.exchange.output_events = 5
    call.upstream_status = 200
    journal.calls.checkpoint(progress_of)
    journal.calls.checkpoint(progress_of)
    entries = lines(journal)
    assert [entry[0] if isinstance(entry, list) else "progress" for entry in entries] == ["open", "progress"]
    assert entries[1]["usage"]["output_tokens"] == 5 and entries[1]["http_status"] == 200
    # The live usage is left as it is: the stream goes on.
    assert call.exchange.usage is None


def test_an_open_call_survives_rotation_and_a_closed_one_is_not_recovered(tmp_path):
    journal = Journal(str(tmp_path), "usage-h-1")
    running = admitted(journal, "req_running")
    admitted(journal, "req_done")
    journal.append({"request_id": "req_done", "credits": Decimal("0.5")})
    journal.calls.close("req_done")
    # The batch holding req_done's record is committed: its segment goes.
    journal.committed(journal.rotate())
    assert journal.segments() == []
    running.exchange.output_events = 3
    journal.calls.checkpoint(progress_of)
    # Killed here: only the running call is recovered, from its last progress.
    found = Journal(str(tmp_path), "usage-h-1").calls.read()
    records = recovered_records(found, set(), BOOK)
    assert [r["request_id"] for r in records] == ["req_running", "req_done"]
    # req_done's record was committed: the database skips it (by request id);
    # its final record, still journaled, is what replays otherwise.
    assert [r["request_id"] for r in recovered_records(found, {"req_done"}, BOOK)] == ["req_running"]
    record = records[0]
    assert record["status"] == "interrupted" and record["estimated"] is True
    assert (record["input_tokens"], record["output_tokens"]) == (100, 3)
    assert record["credits"] == Decimal("0.000016800") and record["http_status"] == 503
    assert (record["agent_id"], record["key_id"], record["route"], record["stream"]) == (3, 7, "chat.completions", True)
    assert record["started_at"] == datetime.datetime(2026, 12, 2, 8, 0)


def test_a_call_without_progress_is_billed_its_input_estimate(tmp_path):
    journal = Journal(str(tmp_path), "usage-h-1")
    admitted(journal, "req_quiet", request_bytes=4000)
    (record,) = recovered_records(journal.calls.read(), set(), BOOK)
    assert (record["input_tokens"], record["output_tokens"], record["estimated"]) == (1000, 0, True)
    assert record["credits"] == Decimal("0.000150000")


def test_a_free_call_stays_free(tmp_path):
    journal = Journal(str(tmp_path), "usage-h-1")
    call = admitted(journal, "req_free")
    call.exchange.make_free()
    journal.calls.open(call, open_entry(call))  # as admitted after make_free
    (record,) = recovered_records(journal.calls.read(), set(), BOOK)
    assert record["credits"] == 0 and record["estimated"] is True


def test_a_stream_whose_last_events_went_out_is_recovered_completed(tmp_path):
    """An SDK stops reading at [DONE]: killed before the transfer ends, the
    call is still complete, billed from the provider's figures."""
    from kylon.usage import UsageWriter

    journal = Journal(str(tmp_path), "usage-h-1")
    writer = UsageWriter(None, None, journal=journal)
    call = admitted(journal, "req_done")
    call.upstream_status = 200
    call.exchange.output_events = 6
    call.exchange.usage, call.exchange.usage_final = Usage(input_tokens=9, output_tokens=12), True
    writer.answered(call)
    call.exchange.output_events = 7
    journal.calls.checkpoint(progress_of)  # nothing after the last line
    assert len(lines(journal)) == 2
    (record,) = recovered_records(journal.calls.read(), set(), BOOK)
    assert (record["status"], record["http_status"], record["estimated"]) == ("completed", 200, False)
    assert (record["input_tokens"], record["output_tokens"], record["error"]) == (9, 12, "")
    # An error in the stream: not complete, so no last line yet.
    errored = admitted(journal, "req_error")
    errored.upstream_status, errored.exchange.stream_done, errored.exchange.stream_error = 200, True, "overloaded"
    writer.answered(errored)
    assert not errored.answered


def test_compaction_keeps_open_calls_only(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "COMPACT_AFTER", 10)
    journal = Journal(str(tmp_path), "usage-h-1")
    running = admitted(journal, "req_running")
    running.exchange.output_events = 2
    journal.calls.checkpoint(progress_of)
    for n in range(20):
        admitted(journal, f"req_{n}")
        journal.calls.close(f"req_{n}")
    (first,) = journal.calls.files()
    journal.calls.checkpoint(progress_of)  # 22 lines > 10 + 2 × 1 open: compacted
    (second,) = journal.calls.files()
    assert second != first
    entries = lines(journal)
    assert (entries[0][:2], entries[1]["progress"], len(entries)) == (["open", "req_running"], "req_running", 2)
    # New lines go on in the new file.
    running.exchange.output_events = 4
    journal.calls.checkpoint(progress_of)
    assert lines(journal)[-1]["usage"]["output_tokens"] == 4


def test_killed_mid_compaction_the_newer_progress_wins(tmp_path):
    journal = Journal(str(tmp_path), "usage-h-1")
    call = admitted(journal, "req_a")
    call.exchange.output_events = 2
    journal.calls.checkpoint(progress_of)
    old = journal.calls.path
    saved = open(old, "rb").read()
    call.exchange.output_events = 7
    journal.calls.checkpoint(progress_of)
    journal.calls.compact()
    with open(old, "wb") as f:  # the old file, as if the kill came before its deletion
        f.write(saved)
    (record,) = recovered_records(Journal(str(tmp_path), "usage-h-1").calls.read(), set(), BOOK)
    assert record["output_tokens"] == 7


def test_a_torn_last_line_is_skipped(tmp_path):
    journal = Journal(str(tmp_path), "usage-h-1")
    admitted(journal, "req_a")
    with open(journal.calls.path, "ab") as f:
        f.write(b'{"progress":"req_a","usa')
    (record,) = recovered_records(Journal(str(tmp_path), "usage-h-1").calls.read(), set(), BOOK)
    assert record["input_tokens"] == 100


def test_each_process_reads_only_its_own_files(tmp_path):
    admitted(Journal(str(tmp_path), "usage-h-80"), "req_80")
    admitted(Journal(str(tmp_path), "usage-h-8080"), "req_8080")
    assert list(Journal(str(tmp_path), "usage-h-80").calls.read()) == ["req_80"]
    assert list(Journal(str(tmp_path), "usage-h-8080").calls.read()) == ["req_8080"]


@pytest.mark.parametrize("kind", ["sqlite", "mariadb"])
def test_replay_records_left_open_calls_once(kind, tmp_path, tmp_path_factory):
    """The replay at start: a final record, a call left open, and a call whose
    record was committed before the kill; then a second start."""
    from kylon.db import DatabaseWorker
    from kylon.models import Agent, UsageRecord, open_database
    from kylon.usage import UsageWriter, write_batch

    from .conftest import drop_database, scratch_database_url
    from .test_usage_batches import Balances, record

    url = scratch_database_url(kind, tmp_path_factory)
    worker = DatabaseWorker(open_database(url))
    try:
        agent_id = worker.run_sync(lambda: Agent.create(name="replay", credits=Decimal("10")).id)
        journal = Journal(str(tmp_path), "usage-h-1")
        for request_id in ("req_open", "req_final", "req_committed"):
            admitted(journal, request_id, agent_id=agent_id)
        worker.run_sync(write_batch, [record(agent_id, "req_committed", "1")])
        journal.append(record(agent_id, "req_final", "2"))
        writer = UsageWriter(worker, Balances(), journal=Journal(str(tmp_path), "usage-h-1"))
        assert writer.replay_journal(BOOK) == 2  # req_final and req_open
        rows = worker.run_sync(lambda: {r.request_id: r.status for r in UsageRecord.select()})
        assert rows == {"req_committed": "completed", "req_final": "completed", "req_open": "interrupted"}
        balance = worker.run_sync(lambda: Agent.get_by_id(agent_id).credits)
        assert balance == Decimal("7") - Decimal("0.000015")
        assert UsageWriter(worker, Balances(), journal=Journal(str(tmp_path), "usage-h-1")).replay_journal(BOOK) == 0
        assert worker.run_sync(lambda: Agent.get_by_id(agent_id).credits) == balance
        assert list(tmp_path.iterdir()) == []
    finally:
        worker.close()
        drop_database(url)
