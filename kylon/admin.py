"""What the operator can do, as plain functions on the database thread.

Both the JSON API and the admin pages call these, so the rules (a ledger row for
every grant, a key shown once, balances read back after an atomic update) live
in one place.
"""

import datetime
import re
from decimal import Decimal, InvalidOperation

import peewee

from . import auth
from .models import (
    Agent,
    AgentSkill,
    ApiKey,
    CreditLedger,
    UsageRecord,
    database,
    from_nano,
    utcnow,
)


class AdminError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


# Credits are kept to the nano-credit (9 decimal places, models.NANO).
MAX_DECIMALS = 9
# A decimal as people write it: no exponent, underscores, spaces or signs but "-".
_PLAIN_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def parse_amount(value, field="amount"):
    """A credit amount or price: a JSON number or a plain decimal string, with
    at most MAX_DECIMALS decimal places (so nothing is rounded away: "1E-30"
    is not silently 0), under 10^9 in size."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise AdminError(400, f"'{field}' must be a decimal number or string.")
    if isinstance(value, str) and not _PLAIN_DECIMAL.fullmatch(value):
        raise AdminError(400, f"'{field}' is not a plain decimal number (like 12.5): {value[:40]!r}.")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise AdminError(400, f"'{field}' is not a decimal number: {value!r}.")
    if not amount.is_finite() or abs(amount) >= Decimal(10) ** 9:
        raise AdminError(400, f"'{field}' is out of range.")
    if amount.as_tuple().exponent < -MAX_DECIMALS:
        raise AdminError(400, f"'{field}' has more than {MAX_DECIMALS} decimal places.")
    return amount


def parse_skills(value):
    if not isinstance(value, list) or not all(isinstance(s, str) and s.strip() for s in value):
        raise AdminError(400, "'skills' must be a list of skill names.")
    return sorted({s.strip() for s in value})


def agent_dict(agent, skills=None):
    if skills is None:
        skills = [s.skill for s in AgentSkill.select().where(AgentSkill.agent == agent.id)]
    return {
        "id": agent.id,
        "name": agent.name,
        "skills": sorted(skills),
        "credits": str(agent.credits),
        "created_at": agent.created_at.isoformat() + "Z",
    }


# Row ids are signed 64-bit integers in both databases: a larger number names no row.
MAX_ID = 2**63 - 1


def row_id(value):
    """An id from a URL or query (digits), or None when it cannot name a row."""
    try:
        number = int(value)
    except (ValueError, TypeError):
        return None
    return number if 0 <= number <= MAX_ID else None


def get_agent(agent_id):
    try:
        return Agent.get_by_id(row_id(agent_id))
    except Agent.DoesNotExist:
        raise AdminError(404, f"No agent with id {agent_id}.")


def create_agent(name, skills=(), credits=0, actor="admin"):
    if not isinstance(name, str) or not name.strip():
        raise AdminError(400, "'name' is required.")
    skills = parse_skills(list(skills))
    credits = parse_amount(credits, "credits")
    if credits < 0:
        raise AdminError(400, "'credits' must not be negative.")
    name = check_name_free(name)
    with database.atomic():
        agent = Agent.create(name=name, credits=credits)
        for skill in skills:
            AgentSkill.create(agent=agent, skill=skill)
        if credits:
            CreditLedger.create(agent=agent, amount=credits, balance_after=credits, note="initial credits", actor=actor)
    return agent_dict(agent, skills)


def check_name_free(name, agent_id=None):
    """The name as stored; agent names are unique without regard to case, so a
    duplicate gets a clear 409 here rather than the unique index's error."""
    name = name.strip()[:200]
    query = Agent.select(Agent.id).where(peewee.fn.LOWER(Agent.name) == name.lower())
    if agent_id is not None:
        query = query.where(Agent.id != agent_id)
    other = query.first()
    if other is not None:
        raise AdminError(409, f"An agent named '{name}' already exists (id {other.id}): choose another name.")
    return name


def list_agents():
    skills = {}
    for row in AgentSkill.select():
        skills.setdefault(row.agent_id, []).append(row.skill)
    return [agent_dict(a, skills.get(a.id, [])) for a in Agent.select().order_by(Agent.id)]


def agent_detail(agent_id):
    return agent_dict(get_agent(agent_id))


def update_agent(agent_id, name=None, skills=None):
    agent = get_agent(agent_id)
    with database.atomic():
        if name is not None:
            if not isinstance(name, str) or not name.strip():
                raise AdminError(400, "'name' must be a non-empty string.")
            agent.name = check_name_free(name, agent.id)
            agent.save()
        if skills is not None:
            skills = parse_skills(skills)
            AgentSkill.delete().where(AgentSkill.agent == agent.id).execute()
            for skill in skills:
                AgentSkill.create(agent=agent, skill=skill)
    return agent_dict(agent)


def adjust_credits(agent_id, amount, note="", actor="admin"):
    amount = parse_amount(amount)
    if amount == 0:
        raise AdminError(400, "'amount' must not be zero.")
    note = note if isinstance(note, str) else ""
    with database.atomic():
        agent = get_agent(agent_id)
        Agent.update(credits=Agent.credits + amount).where(Agent.id == agent.id).execute()
        balance = Agent.get_by_id(agent.id).credits
        CreditLedger.create(agent=agent.id, amount=amount, balance_after=balance, note=note[:500], actor=actor)
    return {"id": agent.id, "credits": str(balance), "amount": str(amount)}


def ledger(agent_id, limit=100):
    get_agent(agent_id)
    rows = (
        CreditLedger.select()
        .where(CreditLedger.agent == row_id(agent_id))
        .order_by(CreditLedger.id.desc())
        .limit(limit)
    )
    return [
        {
            "id": r.id,
            "amount": str(r.amount),
            "balance_after": str(r.balance_after),
            "note": r.note,
            "actor": r.actor,
            "created_at": r.created_at.isoformat() + "Z",
        }
        for r in rows
    ]


def parse_time(value, field):
    if value in (None, ""):
        return None
    try:
        t = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise AdminError(400, f"'{field}' must be an ISO 8601 time.")
    if t.tzinfo is not None:
        t = t.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return t


def create_key(agent_id, name="", expires_at=None):
    agent = get_agent(agent_id)
    expires = parse_time(expires_at, "expires_at")
    key = auth.generate_key()
    row = ApiKey.create(
        agent=agent,
        name=(name if isinstance(name, str) else "")[:200],
        prefix=auth.key_display_prefix(key),
        key_hash=auth.hash_key(key),
        expires_at=expires,
    )
    return {"id": row.id, "key": key, "prefix": row.prefix, "name": row.name, "agent_id": agent.id}


def key_dict(row):
    def t(v):
        return None if v is None else v.isoformat() + "Z"

    return {
        "id": row.id,
        "agent_id": row.agent_id,
        "name": row.name,
        "prefix": row.prefix,
        "created_at": t(row.created_at),
        "last_used_at": t(row.last_used_at),
        "expires_at": t(row.expires_at),
        "revoked_at": t(row.revoked_at),
    }


def list_keys(agent_id=None):
    query = ApiKey.select().order_by(ApiKey.id)
    if agent_id is not None:
        query = query.where(ApiKey.agent == row_id(agent_id))
    return [key_dict(r) for r in query]


def revoke_key(key_id):
    try:
        row = ApiKey.get_by_id(row_id(key_id))
    except ApiKey.DoesNotExist:
        raise AdminError(404, f"No key with id {key_id}.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        row.save()
    return key_dict(row), row.key_hash


USAGE_FIELDS = (
    "request_id agent_id key_id provider route model stream status http_status input_tokens "
    "cached_input_tokens cache_write_tokens output_tokens reasoning_tokens unit units credits "
    "estimated fallback_price error upstream_request_id started_at duration_ms ttfb_ms "
    "client_frames upstream_frames"
).split()


def usage_dict(r):
    d = {f: getattr(r, f) for f in USAGE_FIELDS}
    d["credits"] = str(r.credits)
    d["units"] = str(r.units)
    d["started_at"] = r.started_at.isoformat() + "Z"
    return d


def where_ids(q, model, filters):
    """`q` narrowed to the filter's agent_id and key_id (on `model`'s columns of those names)."""
    for field in ("agent_id", "key_id"):
        if filters.get(field) not in (None, ""):
            number = row_id(filters[field])
            if number is None:
                raise AdminError(400, f"'{field}' must be a number.")
            q = q.where(getattr(model, field) == number)
    return q


def usage_query(filters):
    q = where_ids(UsageRecord.select(), UsageRecord, filters)
    status = filters.get("status")
    if status == "failed":  # every call that did not complete
        q = q.where(UsageRecord.status != "completed")
    elif status:
        q = q.where(UsageRecord.status == status)
    for field in ("provider", "model", "route", "request_id"):
        if filters.get(field):
            q = q.where(getattr(UsageRecord, field) == filters[field])
    since = parse_time(filters.get("since"), "since")
    until = parse_time(filters.get("until"), "until")
    if since:
        q = q.where(UsageRecord.started_at >= since)
    if until:
        q = q.where(UsageRecord.started_at < until)
    return q


def list_usage(filters, limit=100, offset=0):
    limit = max(1, min(int(limit), 1000))
    q = usage_query(filters).order_by(UsageRecord.started_at.desc(), UsageRecord.id.desc())
    return [usage_dict(r) for r in q.limit(limit).offset(min(max(0, int(offset)), MAX_ID))]


def usage_totals(filters):
    q = usage_query(filters)
    row = q.select(
        peewee.fn.COUNT(UsageRecord.id),
        peewee.fn.SUM(UsageRecord.input_tokens),
        peewee.fn.SUM(UsageRecord.output_tokens),
        peewee.fn.SUM(UsageRecord.credits),
    ).tuples()[0]
    return {
        "requests": row[0] or 0,
        "input_tokens": int(row[1] or 0),
        "output_tokens": int(row[2] or 0),
        "credits": str(from_nano(row[3] or 0)),
    }


# -- for the admin pages -----------------------------------------------------

# The chart's time ranges: how far back, and the bucket size. Buckets are
# cut from the stored UTC time's text, "YYYY-MM-DD HH" or "YYYY-MM-DD", which
# SQLite (text column) and MySQL (DATETIME cast to text) spell alike.
CHART_RANGES = {
    "24h": (datetime.timedelta(hours=24), "hour"),
    "7d": (datetime.timedelta(days=7), "day"),
    "30d": (datetime.timedelta(days=30), "day"),
}
_BUCKET_CHARS = {"hour": 13, "day": 10}


def _bucket_start(t, bucket):
    t = t.replace(minute=0, second=0, microsecond=0)
    return t if bucket == "hour" else t.replace(hour=0)


def usage_series(range_name, filters=None, now=None):
    """Requests and credits per hour or day over one of CHART_RANGES,
    oldest first, empty buckets included."""
    if range_name not in CHART_RANGES:
        raise AdminError(400, "'range' must be one of " + ", ".join(CHART_RANGES) + ".")
    span, bucket = CHART_RANGES[range_name]
    now = now or utcnow()
    first = _bucket_start(now - span, bucket)
    if bucket == "hour":
        first += datetime.timedelta(hours=1)
    else:
        first += datetime.timedelta(days=1)
    # coerce(False): the text itself, not the column's conversion to a datetime.
    label = peewee.fn.SUBSTR(UsageRecord.started_at, 1, _BUCKET_CHARS[bucket]).coerce(False)
    rows = (
        usage_query(filters or {})
        .where(UsageRecord.started_at >= first)
        .select(label.alias("bucket"), peewee.fn.COUNT(UsageRecord.id), peewee.fn.SUM(UsageRecord.credits))
        .group_by(label)
        .tuples()
    )
    found = {str(b): (count, from_nano(int(credits or 0))) for b, count, credits in rows}
    step = datetime.timedelta(hours=1) if bucket == "hour" else datetime.timedelta(days=1)
    series = []
    t = first
    while t <= now:
        key = t.strftime("%Y-%m-%d %H" if bucket == "hour" else "%Y-%m-%d")
        count, credits = found.get(key, (0, from_nano(0)))
        series.append({"start": t.isoformat() + "Z", "requests": count, "credits": str(credits)})
        t += step
    return {"range": range_name, "bucket": bucket, "series": series}


def usage_export_batch(filters, after_id=0, limit=1000):
    """Usage records in id order after `after_id` (for a CSV export read in
    batches): [(id, record), ...]."""
    q = usage_query(filters).where(UsageRecord.id > int(after_id)).order_by(UsageRecord.id).limit(limit)
    return [(r.id, usage_dict(r)) for r in q]
