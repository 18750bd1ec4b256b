"""The audit log of admin changes, and the webhooks alerts go to."""

import peewee

from .base import BaseModel, utcnow


class AuditEntry(BaseModel):
    """One admin change: who made it (the admin's label), what it touched and
    how (`changes`: JSON, each changed field as [before, after])."""

    actor = peewee.CharField(max_length=100)
    action = peewee.CharField(max_length=50)  # e.g. "key.update", "credits.adjust"
    subject = peewee.CharField(max_length=50)  # "agent", "key", "price", "gate", "webhook"
    subject_id = peewee.CharField(max_length=200, default="")
    changes = peewee.TextField(default="{}")
    created_at = peewee.DateTimeField(default=utcnow, index=True)


class Webhook(BaseModel):
    """Where alerts go: each delivery is signed with `secret` (HMAC-SHA256)."""

    url = peewee.CharField(max_length=1000)
    secret = peewee.CharField(max_length=200)
    # Comma-separated event kinds it wants ("" = all): low_balance,
    # key_limit_reached, key_expiring.
    events = peewee.CharField(max_length=200, default="")
    enabled = peewee.BooleanField(default=True)
    created_at = peewee.DateTimeField(default=utcnow)
