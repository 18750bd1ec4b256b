"""Agents, their skills and keys, the credit ledger, and the provider gates."""

import peewee

from .base import BaseModel, CreditsField, utcnow


# Limit periods of a key's credit limit (calendar periods, in UTC).
LIMIT_RESETS = ("none", "daily", "weekly", "monthly")


class Limited(BaseModel):
    """The operator's controls an agent and each of its keys may carry (None
    or "" = no limit): requests and tokens (input + output) per minute, calls
    at once, and the models it may call (patterns such as `gpt-5*` or
    `openrouter:moonshotai/*`, one per line)."""

    rpm_limit = peewee.IntegerField(null=True)
    tpm_limit = peewee.BigIntegerField(null=True)
    concurrency_limit = peewee.IntegerField(null=True)
    allowed_models = peewee.TextField(default="")

    # A base for Agent and ApiKey only: never a table of its own.


class Agent(Limited):
    name = peewee.CharField(max_length=200, unique=True)
    credits = CreditsField(default=0)
    created_at = peewee.DateTimeField(default=utcnow)
    # Low-balance alert thresholds, comma-separated: "20%" (of the last
    # grant) or an absolute amount ("5", "0").
    alert_thresholds = peewee.CharField(max_length=200, default="")


class AgentSkill(BaseModel):
    agent = peewee.ForeignKeyField(Agent, backref="skill_rows", on_delete="CASCADE")
    skill = peewee.CharField(max_length=100)

    class Meta:
        indexes = ((("agent", "skill"), True),)


class ApiKey(Limited):
    agent = peewee.ForeignKeyField(Agent, backref="keys", on_delete="CASCADE")
    name = peewee.CharField(max_length=200, default="")
    # The first characters of the key, shown to operators to tell keys apart.
    prefix = peewee.CharField(max_length=32)
    key_hash = peewee.CharField(max_length=64, unique=True)
    created_at = peewee.DateTimeField(default=utcnow)
    last_used_at = peewee.DateTimeField(null=True)
    expires_at = peewee.DateTimeField(null=True)
    revoked_at = peewee.DateTimeField(null=True)
    # Credits this key may spend per period (on top of the agent's balance).
    credit_limit = CreditsField(null=True)
    limit_reset = peewee.CharField(max_length=10, default="none")


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
