"""Alerts to the operator's webhooks (docs/controls.md, "Alerts").

Three kinds: `low_balance` (an agent's balance at or below one of its
`alert_thresholds`: a percentage of its last grant, or an amount),
`key_limit_reached` (a key's spend this period at its `credit_limit`) and
`key_expiring` (a key's `expires_at` within `key_expiry_alert_days`).

Nothing here runs on the proxy path. A watcher looks every
`alert_check_seconds` (on the database thread, reading only agents with
thresholds and keys with a limit or an expiry) for conditions that hold, and
inserts an AlertEvent per crossing; the unique index over (kind, subject,
threshold, epoch) makes it once per crossing over every process on the
database, and the process whose INSERT wins enqueues a WebhookDelivery per
webhook that wants the kind. A sender, as often, claims due deliveries with a
conditional UPDATE, POSTs them signed (`X-Kylon-Signature: t=…,v1=HMAC-SHA256
(secret, "t.body")`), records each attempt, and retries failures with a
growing delay (BACKOFF) up to `webhook_max_attempts`.
"""

import asyncio
import datetime
import hashlib
import hmac
import json
import logging
import time
import uuid
from decimal import Decimal

import peewee
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from . import metrics, periods
from .controls import parse_thresholds
from .db import repeat
from .models import (
    NANO_QUANTUM,
    Agent,
    AlertEvent,
    ApiKey,
    CreditLedger,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
    database,
    utcnow,
)

log = logging.getLogger("kylon.alerts")

LOW_BALANCE = "low_balance"
KEY_LIMIT_REACHED = "key_limit_reached"
KEY_EXPIRING = "key_expiring"
EVENT_KINDS = (LOW_BALANCE, KEY_LIMIT_REACHED, KEY_EXPIRING)
TEST = "test"  # a test delivery the operator asked for, to one webhook

# Retry delays as multiples of `webhook_retry_seconds`: with the default 5 s,
# 5 s, 30 s, 2 min, 10 min, then every hour.
BACKOFF = (1, 6, 24, 120, 720)
# Deliveries one sender pass claims at most.
CLAIM_BATCH = 50


def iso(t):
    return None if t is None else t.isoformat() + "Z"


def amount(value):
    """Credits as the admin API writes them: exact, no tail of zeros."""
    return f"{Decimal(value).quantize(NANO_QUANTUM).normalize():f}"


# -- detection (database thread) ---------------------------------------------


def low_balance_crossings():
    """(kind, agent id, threshold, epoch, data) for each threshold an agent's
    balance is at or below. The epoch is the agent's last grant (a new grant
    re-arms its alerts); a percentage needs a grant to be a percentage of."""
    agents = list(Agent.select(Agent.id, Agent.name, Agent.credits, Agent.alert_thresholds)
                  .where(Agent.alert_thresholds != ""))
    if not agents:
        return []
    last_ids = (CreditLedger.select(peewee.fn.MAX(CreditLedger.id))
                .where(CreditLedger.agent.in_([a.id for a in agents]) & (CreditLedger.amount > 0))
                .group_by(CreditLedger.agent))
    grants = {g.agent_id: g for g in CreditLedger.select().where(CreditLedger.id.in_(last_ids))}
    found = []
    for agent in agents:
        grant = grants.get(agent.id)
        for threshold in agent.alert_thresholds.split(","):
            [(is_percent, number)] = parse_thresholds(threshold)
            if is_percent and grant is None:
                continue
            level = (grant.amount * number / 100).quantize(NANO_QUANTUM) if is_percent else number
            if agent.credits > level:
                continue
            data = {
                "agent_id": agent.id, "agent_name": agent.name, "balance": amount(agent.credits),
                "threshold": threshold, "threshold_credits": amount(level),
                "last_grant": None if grant is None else amount(grant.amount),
                "last_grant_at": None if grant is None else iso(grant.created_at),
            }
            found.append((LOW_BALANCE, agent.id, threshold, str(grant.id if grant else 0), data))
    return found


def key_fields(key):
    return {"agent_id": key.agent.id, "agent_name": key.agent.name, "key_id": key.id, "key_name": key.name,
            "key_prefix": key.prefix}


def key_limit_crossings(now):
    """A key whose spend this period (from the daily rollups) reached its
    credit limit; the epoch is the period's start (a new period re-arms), the
    threshold the limit (a raised limit re-arms too)."""
    keys = list(ApiKey.select(ApiKey, Agent.id, Agent.name).join(Agent)
                .where(ApiKey.credit_limit.is_null(False) & ApiKey.revoked_at.is_null()))
    starts = {k.id: periods.period_start(k.limit_reset, now) for k in keys}
    spent = periods.key_spend(starts)
    found = []
    for key in keys:
        if spent[key.id] < key.credit_limit:
            continue
        data = {**key_fields(key), "limit": amount(key.credit_limit), "spent": amount(spent[key.id]),
                "limit_reset": key.limit_reset, "period_start": iso(starts[key.id]),
                "resets_at": iso(periods.next_reset(key.limit_reset, now))}
        found.append((KEY_LIMIT_REACHED, key.id, amount(key.credit_limit), iso(starts[key.id]) or "", data))
    return found


def key_expiry_crossings(now, window):
    """A key (not revoked) that expires within `window`; the epoch is the
    expiry time (a key given a new one is announced again)."""
    keys = (ApiKey.select(ApiKey, Agent.id, Agent.name).join(Agent)
            .where(ApiKey.expires_at.is_null(False) & ApiKey.revoked_at.is_null()
                   & (ApiKey.expires_at > now) & (ApiKey.expires_at <= now + window)))
    return [(KEY_EXPIRING, key.id, "", iso(key.expires_at),
             {**key_fields(key), "expires_at": iso(key.expires_at)}) for key in keys]


def subscribed(kind):
    """Ids of the enabled webhooks that want `kind` (events "" = every kind)."""
    return [w.id for w in Webhook.select(Webhook.id, Webhook.events).where(Webhook.enabled == True)  # noqa: E712
            if not w.events or kind in w.events.split(",")]


def fire(kind, subject_id, threshold, epoch, data, webhook_ids):
    """Insert the event and its deliveries in one transaction; False when
    another process (or an earlier pass) inserted that event first."""
    try:
        with database.atomic():
            event = AlertEvent.create(kind=kind, subject_id=subject_id, threshold=threshold, epoch=epoch,
                                      data=json.dumps(data, sort_keys=True))
            if webhook_ids:
                WebhookDelivery.insert_many([{"event": event.id, "webhook": w, "next_attempt_at": event.created_at}
                                             for w in webhook_ids]).execute()
    except peewee.IntegrityError:
        return False
    return True


def check(now, window, known):
    """Fire every crossing not fired yet; returns the kinds this call fired.
    `known`: the (kind, subject, threshold, epoch) this process has seen fired
    (a set it keeps), so that a condition that goes on holding costs no
    INSERT each pass."""
    crossings = low_balance_crossings() + key_limit_crossings(now) + key_expiry_crossings(now, window)
    new = [c for c in crossings if c[:4] not in known]
    if not new:
        return []
    # Those fired already (by another process, or before this one started).
    for kind in {c[0] for c in new}:
        ids = [c[1] for c in new if c[0] == kind]
        query = (AlertEvent.select(AlertEvent.kind, AlertEvent.subject_id, AlertEvent.threshold, AlertEvent.epoch)
                 .where((AlertEvent.kind == kind) & AlertEvent.subject_id.in_(ids)).tuples())
        known.update(query)
    fired = []
    hooks = {}
    for kind, subject_id, threshold, epoch, data in new:
        if (kind, subject_id, threshold, epoch) in known:
            continue
        if kind not in hooks:
            hooks[kind] = subscribed(kind)
        if fire(kind, subject_id, threshold, epoch, data, hooks[kind]):
            fired.append(kind)
        known.add((kind, subject_id, threshold, epoch))
    return fired


def enqueue_test(webhook_id):
    """A test event for one webhook (the admin's "send a test"); its delivery's id."""
    event = AlertEvent.create(kind=TEST, subject_id=webhook_id, epoch=uuid.uuid4().hex,
                              data=json.dumps({"webhook_id": webhook_id, "message": "A test delivery from Kylon."}))
    return WebhookDelivery.create(event=event.id, webhook=webhook_id, next_attempt_at=event.created_at).id


# -- delivery ------------------------------------------------------------------


def signature(secret, timestamp, body):
    """The X-Kylon-Signature header's value for a body (bytes) sent at `timestamp`."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def body_of(event):
    """The JSON an event is sent as: the same bytes at every attempt."""
    return json.dumps({"id": event.id, "type": event.kind, "created_at": iso(event.created_at),
                       "data": json.loads(event.data)}, sort_keys=True).encode()


def claim_due(now, lease_until, limit=CLAIM_BATCH):
    """Take the due deliveries of enabled webhooks: each moved to `lease_until`
    by an UPDATE that only succeeds while it is still due, so another process
    claiming it at the same moment gets nothing, and one whose process died
    is due again when the lease ends. [(delivery id, attempt number, url,
    secret, kind, body)] on the database thread."""
    due = (WebhookDelivery.select(WebhookDelivery.id).join(Webhook)
           .where((WebhookDelivery.status == "pending") & (WebhookDelivery.next_attempt_at <= now)
                  & (Webhook.enabled == True))  # noqa: E712
           .order_by(WebhookDelivery.next_attempt_at).limit(limit))
    claimed = []
    # Read whole before the UPDATEs: in SQLite a read still open would keep
    # this connection's snapshot, and a write after another's is refused.
    for (delivery_id,) in list(due.tuples()):
        taken = (WebhookDelivery.update(next_attempt_at=lease_until, attempts=WebhookDelivery.attempts + 1)
                 .where((WebhookDelivery.id == delivery_id) & (WebhookDelivery.status == "pending")
                        & (WebhookDelivery.next_attempt_at <= now))
                 .execute())
        if taken:
            claimed.append(delivery_id)
    if not claimed:
        return []
    rows = (WebhookDelivery.select(WebhookDelivery, Webhook, AlertEvent).join(Webhook)
            .switch(WebhookDelivery).join(AlertEvent).where(WebhookDelivery.id.in_(claimed)))
    return [(d.id, d.attempts, d.webhook.url, d.webhook.secret, d.event.kind, body_of(d.event)) for d in rows]


def retry_delay(attempt, base):
    return base * BACKOFF[min(attempt, len(BACKOFF)) - 1]


def record_attempts(results, now, base_delay, max_attempts):
    """Each attempt's outcome: delivered, retried later, or given up after
    `max_attempts`. Returns the outcomes (for the metrics)."""
    outcomes = []
    with database.atomic():
        # A webhook deleted while its deliveries were out took them with it.
        present = {i for (i,) in WebhookDelivery.select(WebhookDelivery.id)
                   .where(WebhookDelivery.id.in_([r[0] for r in results])).tuples()}
        for delivery_id, attempt, status_code, error, duration_ms in results:
            if delivery_id not in present:
                continue
            WebhookAttempt.create(delivery=delivery_id, number=attempt, status_code=status_code, error=error[:500],
                                  duration_ms=duration_ms, created_at=now)
            change = {"last_status_code": status_code, "last_error": error[:500]}
            if not error:
                change.update(status="delivered", delivered_at=now)
                outcomes.append("delivered")
            elif attempt >= max_attempts:
                change.update(status="failed")
                outcomes.append("given_up")
            else:
                change.update(next_attempt_at=now + datetime.timedelta(seconds=retry_delay(attempt, base_delay)))
                outcomes.append("retrying")
            WebhookDelivery.update(**change).where(WebhookDelivery.id == delivery_id).execute()
    return outcomes


class Alerts:
    """The watcher and the sender of one Kylon process (started by app.py)."""

    def __init__(self, db, settings):
        self.db = db
        self.settings = settings
        self.known = set()  # touched only on the database thread
        self.tasks = []

    def start(self):
        every = self.settings.alert_check_seconds
        self.tasks = [repeat(every, self.check, "alert check"), repeat(every, self.deliver, "webhook delivery")]

    def stop(self):
        for task in self.tasks:
            task.cancel()

    async def check(self):
        window = datetime.timedelta(days=self.settings.key_expiry_alert_days)
        for kind in await self.db.run(check, utcnow(), window, self.known):
            metrics.child(metrics.ALERT_EVENTS, kind).inc()

    async def deliver(self):
        s = self.settings
        now = utcnow()
        # The lease outlasts an attempt's time-out, so no claim runs out mid-send.
        lease_until = now + datetime.timedelta(seconds=2 * s.webhook_timeout + 5)
        claimed = await self.db.run(claim_due, now, lease_until)
        if not claimed:
            return
        results = await asyncio.gather(*(self.send(*delivery) for delivery in claimed))
        outcomes = await self.db.run(record_attempts, results, utcnow(), s.webhook_retry_seconds,
                                     s.webhook_max_attempts)
        for outcome in outcomes:
            metrics.child(metrics.WEBHOOK_DELIVERIES, outcome).inc()

    async def send(self, delivery_id, attempt, url, secret, kind, body):
        """One POST; (delivery id, attempt, status code or None, error or "", ms)."""
        timeout = self.settings.webhook_timeout
        headers = {"Content-Type": "application/json", "User-Agent": "Kylon-Webhooks/1",
                   "X-Kylon-Event": kind, "X-Kylon-Delivery": str(delivery_id),
                   "X-Kylon-Signature": signature(secret, int(time.time()), body)}
        started = time.monotonic()
        try:
            response = await AsyncHTTPClient().fetch(
                HTTPRequest(url, method="POST", body=body, headers=headers, connect_timeout=timeout,
                            request_timeout=timeout, follow_redirects=False),
                raise_error=False)
            code = response.code
            error = "" if 200 <= code < 300 else f"HTTP {code}"
        except Exception as e:  # no answer: refused, time-out, DNS (curl's message)
            code, error = None, getattr(e, "message", None) or str(e) or type(e).__name__
        return delivery_id, attempt, code, error, int((time.monotonic() - started) * 1000)
