"""Agents, their skills and keys, the credit ledger, and the provider gates."""

import peewee

from .base import BaseModel, CreditsField, utcnow


class Agent(BaseModel):
    name = peewee.CharField(max_length=200, unique=True)
    credits = CreditsField(default=0)
    created_at = peewee.DateTimeField(default=utcnow)


class AgentSkill(BaseModel):
    agent = peewee.ForeignKeyField(Agent, backref="skill_rows", on_delete="CASCADE")
    skill = peewee.CharField(max_length=100)

    class Meta:
        indexes = ((("agent", "skill"), True),)


class ApiKey(BaseModel):
    agent = peewee.ForeignKeyField(Agent, backref="keys", on_delete="CASCADE")
    name = peewee.CharField(max_length=200, default="")
    # The first characters of the key, shown to operators to tell keys apart.
    prefix = peewee.CharField(max_length=32)
    key_hash = peewee.CharField(max_length=64, unique=True)
    created_at = peewee.DateTimeField(default=utcnow)
    last_used_at = peewee.DateTimeField(null=True)
    expires_at = peewee.DateTimeField(null=True)
    revoked_at = peewee.DateTimeField(null=True)


class CreditLedger(BaseModel):
    """Every grant or adjustment by an operator, with the balance it left."""

    agent = peewee.ForeignKeyField(Agent, backref="ledger", on_delete="CASCADE")
    amount = CreditsField()
    balance_after = CreditsField()
    note = peewee.CharField(max_length=500, default="")
    actor = peewee.CharField(max_length=100, default="admin")
    created_at = peewee.DateTimeField(default=utcnow, index=True)


class Gate(BaseModel):
    """A skill an agent needs to use a provider, or only one route of it
    (`route` is a path prefix under the provider; empty means the whole provider)."""

    provider = peewee.CharField(max_length=50)
    route = peewee.CharField(max_length=200, default="")
    skill = peewee.CharField(max_length=100)

    class Meta:
        indexes = ((("provider", "route"), True),)
