"""Alerts that fired, and their deliveries to the webhooks (kylon/alerts.py)."""

import peewee

from .base import BaseModel, utcnow
from .controls import Webhook


class MicroDateTimeField(peewee.DateTimeField):
    """A time to the microsecond in MySQL too (DATETIME(6); plain DATETIME
    keeps whole seconds): retry delays and attempt times are seconds apart."""

    def get_modifiers(self):
        return [6]


class AlertEvent(BaseModel):
    """One alert, fired once: the unique index over (kind, subject, threshold,
    epoch) lets one process's INSERT win when several see the same crossing.
    `epoch` re-arms an alert: a new grant (low balance), a new period (key
    limit), a new expiry time (key expiring)."""

    kind = peewee.CharField(max_length=30)  # low_balance, key_limit_reached, key_expiring, test
    subject_id = peewee.BigIntegerField()  # the agent's or the key's id (the webhook's, for a test)
    threshold = peewee.CharField(max_length=50, default="")
    epoch = peewee.CharField(max_length=40, default="")
    data = peewee.TextField(default="{}")  # JSON: the payload's "data"
    created_at = MicroDateTimeField(default=utcnow)

    class Meta:
        indexes = ((("kind", "subject_id", "threshold", "epoch"), True),)


class WebhookDelivery(BaseModel):
    """An event on its way to one webhook. `next_attempt_at` is also the
    claim: a process sending it first moves it past the attempt's time-out,
    with an UPDATE conditional on it being due, so no two processes send it
    together, and a claim a crashed process left runs out by itself."""

    event = peewee.ForeignKeyField(AlertEvent, on_delete="CASCADE")
    webhook = peewee.ForeignKeyField(Webhook, on_delete="CASCADE")
    status = peewee.CharField(max_length=10, default="pending")  # pending, delivered, failed (given up)
    attempts = peewee.IntegerField(default=0)
    next_attempt_at = MicroDateTimeField(default=utcnow)
    last_status_code = peewee.IntegerField(null=True)
    last_error = peewee.CharField(max_length=500, default="")
    delivered_at = MicroDateTimeField(null=True)
    created_at = MicroDateTimeField(default=utcnow)

    class Meta:
        indexes = ((("status", "next_attempt_at"), False),)


class WebhookAttempt(BaseModel):
    """One attempt at a delivery and how it went."""

    delivery = peewee.ForeignKeyField(WebhookDelivery, on_delete="CASCADE")
    number = peewee.IntegerField()
    status_code = peewee.IntegerField(null=True)  # None: no HTTP answer (see error)
    error = peewee.CharField(max_length=500, default="")
    duration_ms = peewee.IntegerField(default=0)
    created_at = MicroDateTimeField(default=utcnow)
