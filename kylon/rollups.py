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


def bucket_starts(started_at):
    hour = started_at.replace(minute=0, second=0, microsecond=0)
    return ((HOUR, hour), (DAY, hour.replace(hour=0)))


def summed(records):
    """{key tuple: [requests, input, output, nano-credits]} for each hour and
    day, in every kind (a kind's missing dimensions as 0 or "")."""
    sums = defaultdict(lambda: [0, 0, 0, 0])
    for r in records:
        dims = {"agent_id": r["agent_id"], "key_id": r.get("key_id") or 0, "provider": r["provider"],
                "model": r.get("model") or "", "status": r["status"]}
        figures = (1, r.get("input_tokens") or 0, r.get("output_tokens") or 0, to_nano(r.get("credits") or 0))
        for period, start in bucket_starts(r["started_at"]):
            for kind, kept in KINDS.items():
                key = (period + kind, str(start)) + tuple(dims[d] if d in kept else BLANK[d] for d in KEY[2:])
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
