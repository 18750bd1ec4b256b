"""Keeping UsageRollup in step with the usage records (on the database thread).

`add(records)` runs inside the usage writer's transaction, for the records
that transaction inserts, so a rolled-back or skipped record is never counted.
`rebuild()` sums the records already there (a database upgraded to rollups).
"""

from collections import defaultdict

import peewee

from .models import UsageRecord, UsageRollup, database, to_nano
from .models.rollup import DAY, HOUR, KINDS

KEY = ("period", "start", "agent_id", "key_id", "provider", "model", "status")
SUMS = ("requests", "input_tokens", "output_tokens", "credits")
COLUMNS = KEY + SUMS
ROWS_PER_STATEMENT = 200
# What a kind stores for a dimension it does not keep.
BLANK = {"agent_id": 0, "key_id": 0, "provider": "", "model": "", "status": ""}


# For each kind, the positions in a record's (agent, key, provider, model,
# status) that it keeps; the others take BLANK.
_KEPT = [(kind, tuple(i if d in kept else None for i, d in enumerate(KEY[2:]))) for kind, kept in KINDS.items()]
_BLANKS = tuple(BLANK[d] for d in KEY[2:])


def summed(records):
    """{key tuple: [requests, input, output, nano-credits]} for each hour and
    day, in every kind (a kind's missing dimensions as 0 or "").

    The records are first summed per hour and full dimensions: a batch holds
    few such groups (calls of one agent, key and model), so the eight rows
    each record belongs to are made once a group, not once a record."""
    groups = {}
    for r in records:
        started = r["started_at"]
        group = (started.replace(minute=0, second=0, microsecond=0), r["agent_id"], r.get("key_id") or 0,
                 r["provider"], r.get("model") or "", r["status"])
        row = groups.get(group)
        if row is None:
            row = groups[group] = [0, 0, 0, 0]
        row[0] += 1
        row[1] += r.get("input_tokens") or 0
        row[2] += r.get("output_tokens") or 0
        # Credits are whole nano-credits (Decimals quantized to them): summed
        # exactly, turned into an integer once a group.
        row[3] += r.get("credits") or 0
    sums = defaultdict(lambda: [0, 0, 0, 0])
    for (hour, *dims), (requests, input_tokens, output_tokens, credits) in groups.items():
        figures = (requests, input_tokens, output_tokens, to_nano(credits))
        for period, start in ((HOUR, hour), (DAY, hour.replace(hour=0))):
            for kind, kept in _KEPT:
                key = (period + kind, str(start)) + tuple(
                    _BLANKS[i] if k is None else dims[k] for i, k in enumerate(kept))
                row = sums[key]
                for i, value in enumerate(figures):
                    row[i] += value
    return sums


def upsert_tail():
    if isinstance(database.obj, peewee.MySQLDatabase):
        return " ON DUPLICATE KEY UPDATE " + ", ".join(f"{c} = {c} + VALUES({c})" for c in SUMS)
    return f" ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET " + ", ".join(f"{c} = {c} + excluded.{c}" for c in SUMS)


def add(records):
    items = list(summed(records).items())
    if not items:
        return
    table = UsageRollup._meta.table_name
    marks = "(" + ", ".join([database.param] * len(COLUMNS)) + ")"
    head = f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES "
    for start in range(0, len(items), ROWS_PER_STATEMENT):
        chunk = items[start : start + ROWS_PER_STATEMENT]
        values = [v for key, sums in chunk for v in (*key, *sums)]
        database.execute_sql(head + ", ".join([marks] * len(chunk)) + upsert_tail(), values)


def rebuild():
    """Every rollup row again from the usage records: one GROUP BY per period and kind."""
    mysql = isinstance(database.obj, peewee.MySQLDatabase)
    table = UsageRollup._meta.table_name
    records = UsageRecord._meta.table_name
    starts = {
        HOUR: "DATE_FORMAT(started_at, '%%Y-%%m-%%d %%H:00:00')" if mysql else "substr(started_at, 1, 13) || ':00:00'",
        DAY: "DATE_FORMAT(started_at, '%%Y-%%m-%%d 00:00:00')" if mysql else "substr(started_at, 1, 10) || ' 00:00:00'",
    }
    column = {"agent_id": "agent_id", "key_id": "COALESCE(key_id, 0)", "provider": "provider", "model": "model", "status": "status"}
    # No transaction of its own: the schema upgrade runs it in its own (where
    # MySQL's DDL has just committed implicitly, a savepoint would be lost).
    UsageRollup.delete().execute()
    for period, start in starts.items():
        for kind, kept in KINDS.items():
            dims = [column[d] if d in kept else repr(BLANK[d]) for d in KEY[2:]]
            database.execute_sql(
                f"INSERT INTO {table} ({', '.join(COLUMNS)}) "
                f"SELECT '{period + kind}', {start}, {', '.join(dims)}, "
                "COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(credits) "
                f"FROM {records} GROUP BY {', '.join([start] + [column[d] for d in kept])}"
            )
