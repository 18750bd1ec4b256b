"""Peewee models and the database binding.

`open_database(url)` binds the models to the database named by a
`playhouse.db_url` URL, creates missing tables and upgrades an older schema
(migrations.py).
"""

from playhouse.db_url import connect

from .base import database, CreditsField, to_nano, from_nano, utcnow, NANO as NANO_QUANTUM
from .account import LIMIT_RESETS, Agent, AgentSkill, ApiKey, CreditLedger, Gate
from .usage import UsageRecord, UsageStatus
from .pricing import PriceOverride, Setting
from .migrations import SCHEMA_VERSION, upgrade
from .upload import UploadSession
from .holds import CreditHold, KeyHold
from .rollup import UsageRollup
from .controls import AuditEntry, Webhook
from .responses import ResponseBinding
from .alerts import AlertEvent, WebhookAttempt, WebhookDelivery
from .ratelimit import RateRunning, RateWindow

ALL_MODELS = [
    Agent, AgentSkill, ApiKey, CreditLedger, Gate, UsageRecord, PriceOverride, Setting, UploadSession,
    CreditHold, KeyHold, UsageRollup, AuditEntry, Webhook, ResponseBinding, AlertEvent, WebhookDelivery,
    WebhookAttempt, RateWindow, RateRunning,
]


def open_database(url):
    kwargs = {}
    if url.startswith("sqlite"):
        # WAL lets readers (admin pages, tests) run beside the usage writer.
        kwargs["pragmas"] = {"journal_mode": "wal", "busy_timeout": 5000, "foreign_keys": 1}
    elif url.startswith("mysql"):
        kwargs["charset"] = "utf8mb4"
    db = connect(url, **kwargs)
    database.initialize(db)
    with db.connection_context():
        upgrade(db, ALL_MODELS)
    return db
