"""The shared side of rate limits (kylon/ratelimits.py), when no Redis is set:
what every process has claimed of each subject's window, and the calls each
process has running per subject."""

import peewee

from .base import BaseModel, utcnow


class RateWindow(BaseModel):
    """Requests and tokens claimed, by all processes together, of one agent's
    or key's minute ("agent:7", "key:12"; window = Unix minute)."""

    subject = peewee.CharField(max_length=40)
    window = peewee.BigIntegerField()
    requests = peewee.BigIntegerField(default=0)
    tokens = peewee.BigIntegerField(default=0)

    class Meta:
        primary_key = peewee.CompositeKey("subject", "window")


class RateRunning(BaseModel):
    """Calls one process has running for a subject with a concurrency limit,
    published on every refresh (as CreditHold publishes holds)."""

    process_id = peewee.CharField(max_length=40)
    subject = peewee.CharField(max_length=40)
    running = peewee.IntegerField()
    updated_at = peewee.DateTimeField(default=utcnow, index=True)

    class Meta:
        indexes = ((("process_id", "subject"), True),)
