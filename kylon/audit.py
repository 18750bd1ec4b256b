"""The audit log: every admin change, who made it and what it changed
(models.AuditEntry). Called by the admin functions on the database thread,
inside their transaction, so a change and its entry stand or fall together."""

import json

from .models import AuditEntry


def changes(before, after):
    """{field: [before, after]} for each field of `after` whose value differs."""
    return {name: [before.get(name), value] for name, value in after.items() if before.get(name) != value}


def created(shown):
    """The changes of a creation: each field given a value, from nothing (the
    id is the entry's subject id, the creation time its own time)."""
    return {name: [None, value] for name, value in shown.items()
            if value not in (None, "", []) and name not in ("id", "created_at")}


def record(actor, action, subject, subject_id="", change=None):
    AuditEntry.create(
        actor=(actor or "admin")[:100], action=action, subject=subject, subject_id=str(subject_id)[:200],
        changes=json.dumps(change or {}, default=str, sort_keys=True),
    )


def entry_dict(row):
    return {
        "id": row.id, "actor": row.actor, "action": row.action, "subject": row.subject,
        "subject_id": row.subject_id, "changes": json.loads(row.changes),
        "created_at": row.created_at.isoformat() + "Z",
    }


def list_entries(subject=None, subject_id=None, limit=100, before_id=None, actor=None):
    """The newest entries first; `before_id` pages on."""
    query = AuditEntry.select().order_by(AuditEntry.id.desc()).limit(limit)
    if subject:
        query = query.where(AuditEntry.subject == subject)
    if subject_id:
        query = query.where(AuditEntry.subject_id == str(subject_id))
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if before_id:
        query = query.where(AuditEntry.id < before_id)
    return [entry_dict(r) for r in query]


def agent_trail(agent_id, key_ids, limit=20):
    """The newest entries about an agent and about its keys, in one query."""
    about = (AuditEntry.subject == "agent") & (AuditEntry.subject_id == str(agent_id))
    if key_ids:
        about |= (AuditEntry.subject == "key") & AuditEntry.subject_id.in_([str(k) for k in key_ids])
    query = AuditEntry.select().where(about).order_by(AuditEntry.id.desc()).limit(limit)
    return [entry_dict(r) for r in query]
