"""The batch writer on the database itself (SQLite and MariaDB): a batch that
meets records already written — a retry after a lost commit outcome, a journal
replayed after a crash — writes only the new ones and debits only them."""

import asyncio
import datetime
import time
from decimal import Decimal

import pytest

from kylon.models import Agent, UsageRecord, open_database
from kylon.db import DatabaseWorker
from kylon.usage import UsageWriter, write_batch

from .conftest import drop_database, scratch_database_url


def record(agent_id, request_id, credits):
    return {
        "request_id": request_id, "agent_id": agent_id, "key_id": 1, "provider": "openai",
        "route": "chat.completions", "model": "gpt-4o-mini", "stream": False, "status": "completed",
        "http_status": 200, "input_tokens": 9, "cached_input_tokens": 3, "cache_write_tokens": 0,
        "output_tokens": 12, "reasoning_tokens": 4, "unit": "", "units": Decimal("1.5"),
        "credits": Decimal(credits), "estimated": False, "fallback_price": False, "error": "",
        "upstream_request_id": "up-1", "started_at": datetime.datetime(2026, 11, 25, 17, 30, 1, 250000),
        "duration_ms": 12, "ttfb_ms": 3,
    }


@pytest.mark.parametrize("kind", ["sqlite", "mariadb"])
def test_a_batch_with_records_already_written_charges_only_the_new(kind, tmp_path_factory):
    url = scratch_database_url(kind, tmp_path_factory)
    db = open_database(url)
    try:
        agent = Agent.create(name="batch", credits=Decimal("10"))
        first = [record(agent.id, f"req_{i}", "0.25") for i in range(3)]
        assert write_batch(first) == 3
        assert Agent.get_by_id(agent.id).credits == Decimal("9.25")
        # Two already there (one of them twice), two new.
        again = [first[0], first[1], first[1], record(agent.id, "req_3", "0.5"), record(agent.id, "req_4", "0.5")]
        assert write_batch(again) == 2
        assert Agent.get_by_id(agent.id).credits == Decimal("8.25")
        assert UsageRecord.select().where(UsageRecord.agent_id == agent.id).count() == 5
        row = UsageRecord.get(UsageRecord.request_id == "req_3")
        # Values bound as text read back as what they were.
        assert row.units == Decimal("1.5") and row.credits == Decimal("0.5")
        # (MariaDB's DATETIME keeps whole seconds.)
        assert row.started_at.replace(microsecond=0) == datetime.datetime(2026, 11, 25, 17, 30, 1)
    finally:
        db.close()
        drop_database(url)


class Balances:
    """What the writer tells the account cache, kept for the test to read."""

    def __init__(self):
        self.charged = self.written = Decimal(0)

    def charge(self, agent_id, credits):
        self.charged += credits

    def charged_written(self, agent_id, credits):
        self.written += credits


def test_shutdown_during_a_periodic_flush_loses_no_record(tmp_path_factory):
    """close() while the periodic flush's batch waits for the busy database
    thread: the batch is still written (it is out of `pending` by then)."""
    url = scratch_database_url("sqlite", tmp_path_factory)
    db = open_database(url)
    worker = DatabaseWorker(db)
    agent = worker.run_sync(lambda: Agent.create(name="close", credits=Decimal("10")))

    async def scenario():
        writer = UsageWriter(worker, Balances(), flush_seconds=0.05)
        writer.start()
        busy = worker.run(time.sleep, 0.5)  # the database thread is taken
        writer.add(record(agent.id, "req_close", "0.25"))
        while writer._flushing is None:  # the periodic flush has taken the batch
            await asyncio.sleep(0.01)
        assert writer.pending == []
        assert await writer.close() is True
        await busy

    try:
        asyncio.run(scenario())
        assert worker.run_sync(lambda: [r.request_id for r in UsageRecord.select()]) == ["req_close"]
        assert worker.run_sync(lambda: Agent.get_by_id(agent.id).credits) == Decimal("9.75")
    finally:
        worker.close()
        drop_database(url)


def test_statement_sizes_are_few_powers_of_two_that_add_up():
    from kylon.usage import ROWS_PER_INSERT, statement_sizes

    shapes = set()
    for count in range(0, 2000):
        sizes = statement_sizes(count)
        assert sum(sizes) == count and sizes == sorted(sizes, reverse=True)
        assert all(size <= ROWS_PER_INSERT and size & (size - 1) == 0 for size in sizes)
        shapes.update(sizes)
    assert len(shapes) <= 9


def peak_resident_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def test_batches_of_every_size_keep_memory_bounded(tmp_path_factory):
    """sqlite3 keeps the last 128 prepared statements; a multi-row INSERT of a
    few hundred rows holds nearly 1 MB. Batches of 128 different sizes must
    not leave 128 such statements behind."""
    url = scratch_database_url("sqlite", tmp_path_factory)
    db = open_database(url)
    try:
        agent = Agent.create(name="sizes", credits=Decimal("10"))
        write_batch([record(agent.id, "req_warm", "0")])
        before = peak_resident_mb()
        n = 0
        for size in range(300, 428):
            write_batch([record(agent.id, f"req_{n + i}", "0") for i in range(size)])
            n += size
        assert UsageRecord.select().count() == n + 1
        # One statement per size: about 100 MB more. Powers of two: a few MB.
        assert peak_resident_mb() - before < 30
    finally:
        db.close()
        drop_database(url)
