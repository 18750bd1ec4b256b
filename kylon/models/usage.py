"""One row per authenticated proxy call."""

import enum

import peewee

from .base import BaseModel, CreditsField


class UsageStatus(enum.StrEnum):
    """What became of a call (kylon/calls/outcome.py decides)."""

    COMPLETED = "completed"
    UPSTREAM_ERROR = "upstream_error"  # the provider answered with an error
    DISCONNECTED = "disconnected"  # the client left before the answer ended
    REJECTED = "rejected"  # refused by Kylon, nothing sent upstream
    ERROR = "error"  # the upstream could not be reached, timed out or broke off
    INTERRUPTED = "interrupted"  # cut by a shutdown
    OUT_OF_CREDITS = "out_of_credits"  # a WebSocket session closed when it had used the agent's credits


class UsageRecord(BaseModel):
    request_id = peewee.CharField(max_length=40, unique=True)
    agent_id = peewee.IntegerField(index=True)
    key_id = peewee.IntegerField(null=True)
    provider = peewee.CharField(max_length=50)
    route = peewee.CharField(max_length=200)
    model = peewee.CharField(max_length=200, default="")
    stream = peewee.BooleanField(default=False)
    # a UsageStatus
    status = peewee.CharField(max_length=20)
    http_status = peewee.IntegerField(null=True)
    input_tokens = peewee.BigIntegerField(default=0)
    cached_input_tokens = peewee.BigIntegerField(default=0)
    cache_write_tokens = peewee.BigIntegerField(default=0)
    output_tokens = peewee.BigIntegerField(default=0)
    reasoning_tokens = peewee.BigIntegerField(default=0)
    # Non-token units: images, characters, seconds (unit names what `units` counts).
    unit = peewee.CharField(max_length=20, default="")
    units = peewee.DecimalField(max_digits=20, decimal_places=6, default=0, auto_round=True)
    credits = CreditsField(default=0)
    # True when any figure above is Kylon's estimate, not the provider's report.
    estimated = peewee.BooleanField(default=False)
    # True when the model had no price of its own and the provider's fallback was used.
    fallback_price = peewee.BooleanField(default=False)
    error = peewee.CharField(max_length=500, default="")
    upstream_request_id = peewee.CharField(max_length=100, default="")
    started_at = peewee.DateTimeField(index=True)
    duration_ms = peewee.IntegerField(default=0)
    ttfb_ms = peewee.IntegerField(null=True)
    # WebSocket sessions: messages the client sent, and the upstream (0 for
    # HTTP calls). A default in the schema too: rows written without them
    # (by a Kylon of before, on a shared database) get 0.
    client_frames = peewee.IntegerField(default=0, constraints=[peewee.SQL("DEFAULT 0")])
    upstream_frames = peewee.IntegerField(default=0, constraints=[peewee.SQL("DEFAULT 0")])

    class Meta:
        # An agent's or a key's calls over time (the usage page's filters, the agent page).
        indexes = ((("agent_id", "started_at"), False), (("key_id", "started_at"), False))
