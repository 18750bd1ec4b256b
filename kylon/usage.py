"""Usage records: built per call by the proxy handler, written in batches.

`UsageWriter.add()` is called on the IOLoop and only appends to a list; every
`usage_flush_seconds` the pending records go to the database thread, where one
transaction inserts them and debits each agent once (`credits = credits - sum`,
atomic in the database). Records already present (same request id) are
skipped with their debit, so a retried batch is never charged twice. A failed
batch stays pending and is retried; shutdown flushes whatever is left.

The journal (kylon/journal.py): so that a SIGKILL loses no call, each call
is journaled as open when admitted, its progress once a second while it
runs, and its final record before the answer's last bytes go out. At start,
before serving, the journal is replayed (idempotently, by request id): the
final records, and a record for each call left open (`interrupted`, or
`completed` for a stream whose last events had gone out).
"""

import asyncio
import logging
from collections import defaultdict
from decimal import Decimal

import peewee

from . import metrics, rollups
from .calls.recovery import answer_entry, open_entry, progress_of, recovered_records
from .models import Agent, UsageRecord, database

log = logging.getLogger("kylon.usage")

BATCH = 200

# How often open calls' progress is journaled: what a SIGKILL can lose of a call.
CHECKPOINT_SECONDS = 1.0


# Most rows per INSERT statement: 26 values each stays under SQLite's 32,766
# bound variables (and far under MySQL's packet size).
ROWS_PER_INSERT = 256


def statement_sizes(count):
    """Row counts of the INSERTs that write `count` rows: powers of two, the
    largest first (300 → 256, 32, 8, 4). sqlite3 caches 128 prepared
    statements: 9 sizes are 9 statements, each reused, not one per batch size."""
    sizes = []
    size = ROWS_PER_INSERT
    while count:
        while size > count:
            size //= 2
        sizes.append(size)
        count -= size
    return sizes


def insert_records(records):
    """Multi-row INSERTs, built here: peewee's insert_many builds every value
    in Python, holding the GIL (IOLoop latency), and executemany re-takes the
    GIL at every row, waiting each time on the busy IOLoop. Decimals and
    datetimes go as the strings the drivers would make (no adapter lookups)."""
    names = list(records[0])
    fields = [UsageRecord._meta.fields[name] for name in names]
    row_marks = "(" + ", ".join([database.param] * len(names)) + ")"
    columns = ", ".join(field.column_name for field in fields)
    head = f"INSERT INTO {UsageRecord._meta.table_name} ({columns}) VALUES "
    converters = [_converter(field) for field in fields]
    cursor = database.cursor()
    start = 0
    for size in statement_sizes(len(records)):
        chunk = records[start : start + size]
        start += size
        values = [
            record[name] if convert is None else convert(record[name])
            for record in chunk
            for convert, name in zip(converters, names)
        ]
        # As peewee's own queries do: driver errors become peewee's (IntegrityError…).
        with peewee.__exception_wrapper__:
            cursor.execute(head + ", ".join([row_marks] * len(chunk)), values)


# Field types whose database values are bound as text (see insert_records).
AS_TEXT = (peewee.DateTimeField, peewee.DecimalField)
# Field types whose db_value leaves a record's value as it is (a record holds
# str, int and bool values for them): bound without a call per value.
AS_IS = (peewee.CharField, peewee.IntegerField, peewee.BigIntegerField, peewee.BooleanField)


def _converter(field):
    if type(field) in AS_IS:
        return None
    if isinstance(field, AS_TEXT):
        return _as_text(field.db_value)
    return field.db_value


def _as_text(db_value):
    def convert(value):
        value = db_value(value)
        return None if value is None else str(value)

    return convert


def debit(records):
    """Take each agent's records' credits off its balance: one atomic UPDATE per agent."""
    debits = defaultdict(Decimal)
    for r in records:
        if r["credits"]:
            debits[r["agent_id"]] += r["credits"]
    for agent_id, amount in debits.items():
        Agent.update(credits=Agent.credits - amount).where(Agent.id == agent_id).execute()


def write_batch(records):
    """On the database thread: insert new records and debit their agents.

    The usual batch is all new: one INSERT and the debits. A batch that meets a
    request id already written (a retry after a commit whose outcome was lost,
    a journal replay) fails on the unique key, is rolled back whole, and is
    written again without the records already there, so none is charged twice."""
    try:
        with database.atomic():
            insert_records(records)
            debit(records)
            rollups.add(records)
        return len(records)
    except peewee.IntegrityError:
        pass
    ids = [r["request_id"] for r in records]
    with database.atomic():
        existing = set()
        for start in range(0, len(ids), BATCH):
            query = UsageRecord.select(UsageRecord.request_id).where(
                UsageRecord.request_id.in_(ids[start : start + BATCH])
            )
            existing.update(row.request_id for row in query)
        fresh = {}
        for r in records:
            if r["request_id"] not in existing:
                fresh.setdefault(r["request_id"], r)
        fresh = list(fresh.values())
        if fresh:
            insert_records(fresh)
            debit(fresh)
            rollups.add(fresh)
    return len(fresh)


class UsageWriter:
    def __init__(self, db_worker, balances, flush_seconds=0.25, journal=None):
        self.db = db_worker
        # credits.Balances: told of each debit as it is charged and as it is committed.
        self.balances = balances
        self.flush_seconds = flush_seconds
        self.journal = journal
        self.pending = []
        # (credits.KeyBalance, credits) of the pending records whose key has a
        # credit limit: charged there at once, reported back once committed.
        self.key_charges = []
        self._task = None
        self._checkpoint_task = None
        self._flushing = None

    def replay_journal(self, pricebook):
        """At start, before serving: write what an earlier run journaled but
        may not have committed (records already in the database are skipped),
        and an `interrupted` record for each call it left open; the journal
        is removed only once all of it is committed."""
        if self.journal is None:
            return 0
        records = self.journal.read_all()
        finished = {r["request_id"] for r in records}
        interrupted = recovered_records(self.journal.calls.read(), finished, pricebook)
        records += interrupted
        written = self.db.run_sync(write_batch, records) if records else 0
        self.journal.remove_all()
        if records:
            log.info("journal replay: %d records (%d calls left open), %d were missing from the database",
                     len(records), len(interrupted), written)
        return written

    def open_call(self, call):
        """An admitted call, journaled before anything goes upstream."""
        if self.journal is not None:
            self.journal.calls.open(call, open_entry(call))

    def answered(self, call):
        """A stream's last events go out next: its figures are journaled first."""
        if self.journal is not None:
            entry = answer_entry(call)
            if entry is not None:
                self.journal.calls.answered(call, entry)

    def add(self, record, key_balance=None):
        journal = self.journal
        if journal is not None:
            journal.append(record)
            # The final record is journaled: the call is closed.
            journal.calls.close(record["request_id"])
        self.pending.append(record)
        self.balances.charge(record["agent_id"], record["credits"])
        if key_balance is not None and record["credits"]:
            key_balance.charged(record["credits"])
            self.key_charges.append((key_balance, record["credits"]))
        metrics.USAGE_PENDING.set(len(self.pending))

    async def flush(self):
        if self._flushing is not None:
            # One batch at a time; a caller that wants everything written waits
            # for the running one and then flushes the rest.
            await self._flushing
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        key_charges, self.key_charges = self.key_charges, []
        segments = self.journal.rotate() if self.journal is not None else []
        self._flushing = asyncio.get_running_loop().create_future()
        try:
            await self.db.run(write_batch, batch)
        except Exception as e:
            metrics.USAGE_WRITE_FAILURES.inc()
            log.warning("writing %d usage records failed, will retry: %s", len(batch), e)
            self.pending[:0] = batch
            self.key_charges[:0] = key_charges
            if self.journal is not None:
                self.journal.failed(segments)
            raise
        else:
            metrics.USAGE_WRITTEN.inc(len(batch))
            if self.journal is not None:
                self.journal.committed(segments)
            for record in batch:
                self.balances.charged_written(record["agent_id"], record["credits"])
            for key_balance, credits in key_charges:
                key_balance.written(credits)
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

    async def _checkpoints(self):
        calls = self.journal.calls
        while True:
            await asyncio.sleep(CHECKPOINT_SECONDS)
            try:
                calls.checkpoint(progress_of)
            except Exception:
                log.exception("journaling the open calls' progress failed")

    def start(self):
        self._task = asyncio.ensure_future(self._run())
        if self.journal is not None:
            self._checkpoint_task = asyncio.ensure_future(self._checkpoints())

    def journal_done(self):
        """Every record committed: with no call left open, the open-call
        files hold nothing the next start needs."""
        if self.journal is not None and not self.journal.calls.live:
            self.journal.calls.remove_files()

    async def close(self, attempts=20):
        if self._task is not None:
            # Never cancel a flush under way: its batch is out of `pending`, and
            # a cancelled wait can drop its write before the database thread
            # takes it up. Once no flush runs, the task only sleeps.
            while self._flushing is not None:
                await self._flushing
            self._task.cancel()
        if self._checkpoint_task is not None:
            self._checkpoint_task.cancel()
        for attempt in range(attempts):
            try:
                await self.flush()
                if not self.pending:
                    self.journal_done()
                    return True
            except Exception:
                await asyncio.sleep(min(0.25 * (attempt + 1), 2))
        log.error("%d usage records could not be written at shutdown", len(self.pending))
        return False
