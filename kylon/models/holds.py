"""Credits held by calls still running, published by each Kylon process so the
others count them too (see auth.AccountCache)."""

import peewee

from .base import BaseModel, CreditsField, utcnow


class CreditHold(BaseModel):
    process_id = peewee.CharField(max_length=40)
    agent_id = peewee.IntegerField()
    amount = CreditsField()
    updated_at = peewee.DateTimeField(default=utcnow, index=True)

    class Meta:
        indexes = ((("process_id", "agent_id"), True),)


class KeyHold(BaseModel):
    """The same, per key with a credit limit: so that processes sharing a
    key's limit count each other's running calls."""

    process_id = peewee.CharField(max_length=40)
    key_id = peewee.IntegerField()
    amount = CreditsField()
    updated_at = peewee.DateTimeField(default=utcnow, index=True)

    class Meta:
        indexes = ((("process_id", "key_id"), True),)
