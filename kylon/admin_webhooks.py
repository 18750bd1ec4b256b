"""The operator's webhooks (where alerts go, kylon/alerts.py), as plain
functions on the database thread for the JSON API and the admin pages.

A webhook's secret signs its deliveries: generated unless the operator gives
one, shown once (in the answer that creates it) and never again; the audit
log notes that it was set or changed, never the secret itself.
"""

import json
import secrets
import urllib.parse

from . import alerts, audit
from .admin import AdminError, row_id
from .models import AlertEvent, Webhook, WebhookAttempt, WebhookDelivery, database

MIN_SECRET = 16
MAX_SECRET = 200
MAX_URL = 1000
# What the audit log shows for a secret.
HIDDEN = "(hidden)"


def parse_url(value):
    if not isinstance(value, str) or not value.strip():
        raise AdminError(400, "'url' is required: the http:// or https:// address to POST alerts to.")
    url = value.strip()
    parts = urllib.parse.urlsplit(url)
    if (parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL
            or any(c.isspace() for c in url)):
        raise AdminError(400, f"'url' must be an http:// or https:// address (at most {MAX_URL} characters): "
                              f"{url[:80]!r}.")
    return url


def parse_events(value):
    """The stored form: kinds comma-separated, "" for every kind."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AdminError(400, "'events' must be a list of event kinds (empty: every kind).")
    kinds = [v for v in dict.fromkeys(value) if v]
    unknown = [v for v in kinds if v not in alerts.EVENT_KINDS]
    if unknown:
        raise AdminError(400, f"Unknown event kind {unknown[0][:40]!r}: one of {', '.join(alerts.EVENT_KINDS)}.")
    return ",".join(k for k in alerts.EVENT_KINDS if k in kinds)


def parse_secret(value):
    if value is None or value == "":
        return "whsec_" + secrets.token_urlsafe(32)
    if not isinstance(value, str) or not MIN_SECRET <= len(value) <= MAX_SECRET or any(c.isspace() for c in value):
        raise AdminError(400, f"'secret' must be {MIN_SECRET} to {MAX_SECRET} characters without spaces "
                              "(or left out: Kylon makes one).")
    return value


def parse_enabled(value):
    if not isinstance(value, bool):
        raise AdminError(400, "'enabled' must be true or false.")
    return value


def webhook_dict(row):
    """A webhook as the API and the pages show it: never its secret."""
    return {"id": row.id, "url": row.url, "events": [e for e in row.events.split(",") if e],
            "enabled": row.enabled, "created_at": alerts.iso(row.created_at)}


def get_webhook(webhook_id):
    try:
        return Webhook.get_by_id(row_id(webhook_id))
    except Webhook.DoesNotExist:
        raise AdminError(404, f"No webhook with id {webhook_id}.")


def list_webhooks():
    return [webhook_dict(w) for w in Webhook.select().order_by(Webhook.id)]


def create_webhook(url, events=None, secret=None, enabled=True, actor="admin"):
    """A new webhook; the answer carries its secret, this once."""
    values = {"url": parse_url(url), "events": parse_events(events), "secret": parse_secret(secret),
              "enabled": parse_enabled(enabled)}
    with database.atomic():
        row = Webhook.create(**values)
        shown = webhook_dict(row)
        audit.record(actor, "webhook.create", "webhook", row.id, audit.changes({}, {**shown, "secret": HIDDEN}))
    return {**shown, "secret": values["secret"]}


def update_webhook(webhook_id, body, actor="admin"):
    """Change the fields of `body` present (url, events, enabled, secret)."""
    row = get_webhook(webhook_id)
    values = {}
    if "url" in body:
        values["url"] = parse_url(body["url"])
    if "events" in body:
        values["events"] = parse_events(body["events"])
    if "enabled" in body:
        values["enabled"] = parse_enabled(body["enabled"])
    if "secret" in body:
        values["secret"] = parse_secret(body["secret"])
    before = {**webhook_dict(row), "secret": HIDDEN}
    with database.atomic():
        for field, value in values.items():
            setattr(row, field, value)
        row.save()
        after = {**webhook_dict(row), "secret": HIDDEN + " (replaced)" if "secret" in values else HIDDEN}
        change = audit.changes(before, after)
        if change:
            audit.record(actor, "webhook.update", "webhook", row.id, change)
    return webhook_dict(row)


def delete_webhook(webhook_id, actor="admin"):
    """The webhook and its deliveries (their events stay: they fired)."""
    row = get_webhook(webhook_id)
    shown = webhook_dict(row)
    with database.atomic():
        deliveries = WebhookDelivery.select(WebhookDelivery.id).where(WebhookDelivery.webhook == row.id)
        WebhookAttempt.delete().where(WebhookAttempt.delivery.in_(deliveries)).execute()
        WebhookDelivery.delete().where(WebhookDelivery.webhook == row.id).execute()
        row.delete_instance()
        audit.record(actor, "webhook.delete", "webhook", row.id, audit.changes({**shown, "secret": HIDDEN}, {}))
    return shown


def delivery_dict(row, attempts):
    return {
        "id": row.id, "event_id": row.event_id, "type": row.event.kind, "data": json.loads(row.event.data),
        "status": row.status, "attempts": row.attempts, "last_status_code": row.last_status_code,
        "last_error": row.last_error,
        "next_attempt_at": alerts.iso(row.next_attempt_at) if row.status == "pending" else None,
        "delivered_at": alerts.iso(row.delivered_at), "created_at": alerts.iso(row.created_at),
        "attempt_log": [{"number": a.number, "status_code": a.status_code, "error": a.error,
                         "duration_ms": a.duration_ms, "at": alerts.iso(a.created_at)} for a in attempts],
    }


def list_deliveries(webhook_ids, limit=50):
    """{webhook id: [its newest deliveries first, each with its attempts]}."""
    out = {}
    for webhook_id in webhook_ids:
        rows = list(WebhookDelivery.select(WebhookDelivery, AlertEvent).join(AlertEvent)
                    .where(WebhookDelivery.webhook == webhook_id)
                    .order_by(WebhookDelivery.id.desc()).limit(limit))
        attempts = {}
        if rows:
            for a in (WebhookAttempt.select().where(WebhookAttempt.delivery.in_([r.id for r in rows]))
                      .order_by(WebhookAttempt.number)):
                attempts.setdefault(a.delivery_id, []).append(a)
        out[webhook_id] = [delivery_dict(r, attempts.get(r.id, [])) for r in rows]
    return out


def webhook_deliveries(webhook_id, limit=50):
    row = get_webhook(webhook_id)
    return list_deliveries([row.id], limit)[row.id]


def send_test(webhook_id):
    """Queue a test delivery to one (enabled) webhook; its delivery's id."""
    row = get_webhook(webhook_id)
    if not row.enabled:
        raise AdminError(409, "This webhook is disabled: enable it to send it a test.")
    with database.atomic():
        return {"delivery_id": alerts.enqueue_test(row.id)}
