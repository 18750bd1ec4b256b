"""Admin page sessions, kept in the database (as Setting rows) so that a
logout ends the session in every Kylon process sharing it. Only the session
id's hash is stored. Functions for the database thread."""

import json
import time

from .digest import sha256_hex
from .models import Setting, database

SESSION_PREFIX = "admin-session:"


def _session_name(session_id):
    return SESSION_PREFIX + sha256_hex(session_id)


def create_admin_session(session_id, who, token_tag, lifetime_seconds):
    now = time.time()
    stale = [
        row.name
        for row in Setting.select().where(Setting.name.startswith(SESSION_PREFIX))
        if _session_value(row.value, now) is None
    ]
    with database.atomic():
        if stale:
            Setting.delete().where(Setting.name.in_(stale)).execute()
        value = {"who": who, "token": token_tag, "expires": now + lifetime_seconds}
        Setting.create(name=_session_name(session_id), value=json.dumps(value))


def _session_value(text, now):
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("expires"), (int, float)) or value["expires"] <= now:
        return None
    return value


def admin_session(session_id):
    """The session's {"who", "token", "expires"}, or None when unknown or expired."""
    row = Setting.get_or_none(Setting.name == _session_name(session_id))
    return None if row is None else _session_value(row.value, time.time())


def delete_admin_session(session_id):
    Setting.delete().where(Setting.name == _session_name(session_id)).execute()
