"""Usage summed per hour and per day, kept with every usage batch, so that the
admin pages read a few thousand summary rows instead of scanning records.

Each period is kept in several kinds: all the dimensions (agent, key, model,
status), and narrower ones the overview reads (KINDS: the dimensions each
keeps; the others are stored as 0 or ""), since a row per agent × key × model
× status is nearly a row per call on a busy day."""

import peewee

from .base import BaseModel

HOUR = "h"
DAY = "d"
# kind → the dimensions its rows keep; the narrowest that can answer is read.
KINDS = {
    "m": ("provider", "model", "status"),
    "a": ("agent_id", "status"),
    "k": ("agent_id", "key_id", "status"),
    "": ("agent_id", "key_id", "provider", "model", "status"),
}


class UsageRollup(BaseModel):
    period = peewee.CharField(max_length=2)  # HOUR or DAY, then the kind
    start = peewee.DateTimeField()  # the hour's or the day's first moment, UTC
    agent_id = peewee.IntegerField()
    # 0 when the call had no key: a NULL would slip past the unique index.
    key_id = peewee.IntegerField(default=0)
    provider = peewee.CharField(max_length=50)
    model = peewee.CharField(max_length=200, default="")
    status = peewee.CharField(max_length=20)
    requests = peewee.BigIntegerField(default=0)
    input_tokens = peewee.BigIntegerField(default=0)
    output_tokens = peewee.BigIntegerField(default=0)
    credits = peewee.BigIntegerField(default=0)  # nano-credits, summed as integers

    class Meta:
        indexes = (
            (("period", "start", "agent_id", "key_id", "provider", "model", "status"), True),
            (("agent_id", "period", "start"), False),
        )
