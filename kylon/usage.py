"""Usage records: built per call by the proxy handler, written in batches.

`UsageWriter.add()` is called on the IOLoop and only appends to a list; every
`usage_flush_seconds` the pending records go to the database thread, where one
transaction inserts them and debits each agent once (`credits = credits - sum`,
atomic in the database). Records already present (same request id) are
skipped with their debit, so a retried batch is never charged twice. A failed
batch stays pending and is retried; shutdown flushes whatever is left.
"""

import asyncio
import logging
from collections import defaultdict
from decimal import Decimal

from . import metrics
from .models import Agent, UsageRecord, database

log = logging.getLogger("kylon.usage")

BATCH = 200


def write_batch(records):
    """On the database thread: insert new records and debit their agents."""
    ids = [r["request_id"] for r in records]
    with database.atomic():
        existing = set()
        for start in range(0, len(ids), BATCH):
            query = UsageRecord.select(UsageRecord.request_id).where(
                UsageRecord.request_id.in_(ids[start : start + BATCH])
            )
            existing.update(row.request_id for row in query)
        fresh = [r for r in records if r["request_id"] not in existing]
        for start in range(0, len(fresh), BATCH):
            UsageRecord.insert_many(fresh[start : start + BATCH]).execute()
        debits = defaultdict(Decimal)
        for r in fresh:
            if r["credits"]:
                debits[r["agent_id"]] += r["credits"]
        for agent_id, amount in debits.items():
            Agent.update(credits=Agent.credits - amount).where(Agent.id == agent_id).execute()
    return len(fresh)


class UsageWriter:
    def __init__(self, db_worker, account_cache, flush_seconds=0.25):
        self.db = db_worker
        self.cache = account_cache
        self.flush_seconds = flush_seconds
        self.pending = []
        self._task = None
        self._flushing = None

    def add(self, record):
        self.pending.append(record)
        self.cache.charge(record["agent_id"], record["credits"])
        metrics.USAGE_PENDING.set(len(self.pending))

    async def flush(self):
        if self._flushing is not None:
            # One batch at a time; a caller that wants everything written waits
            # for the running one and then flushes the rest.
            await self._flushing
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        self._flushing = asyncio.get_running_loop().create_future()
        try:
            await self.db.run(write_batch, batch)
        except Exception as e:
            metrics.USAGE_WRITE_FAILURES.inc()
            log.warning("writing %d usage records failed, will retry: %s", len(batch), e)
            self.pending[:0] = batch
            raise
        else:
            metrics.USAGE_WRITTEN.inc(len(batch))
            for record in batch:
                self.cache.charged_written(record["agent_id"], record["credits"])
        finally:
            done, self._flushing = self._flushing, None
            done.set_result(None)
            metrics.USAGE_PENDING.set(len(self.pending))

    async def _run(self):
        delay = self.flush_seconds
        while True:
            await asyncio.sleep(delay)
            try:
                await self.flush()
                delay = self.flush_seconds
            except Exception:
                delay = min(max(delay * 2, 0.5), 10.0)

    def start(self):
        self._task = asyncio.ensure_future(self._run())

    async def close(self, attempts=20):
        if self._task is not None:
            self._task.cancel()
        for attempt in range(attempts):
            try:
                await self.flush()
                if not self.pending:
                    return True
            except Exception:
                await asyncio.sleep(min(0.25 * (attempt + 1), 2))
        log.error("%d usage records could not be written at shutdown", len(self.pending))
        return False
