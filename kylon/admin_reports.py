"""The admin console's aggregates, on the database thread.

They read UsageRollup (usage summed per hour and per day, kept with every
usage batch: kylon/rollups.py), so a page sums a few thousand summary rows
however many usage records there are. Only a usage filter the rollups cannot
answer (a time that is not on the hour, a route or request id) reads records.
"""

import datetime
from decimal import Decimal

import peewee
from peewee import fn

from . import periods
from .admin import CHART_RANGES, AdminError, key_dict, parse_time, usage_dict, usage_query, where_ids
from .admin import usage_totals as records_totals
from .controls import parse_thresholds
from .models import Agent, ApiKey, CreditLedger, UsageRecord, UsageRollup, from_nano, utcnow
from .models.rollup import DAY, HOUR, KINDS

# Below this balance an agent is "low"; at or below zero it is "exhausted".
LOW_BALANCE = Decimal("1.00")
TOP = 5
# The stacked chart's largest groups; the others are summed as "other".
STACKED_GROUPS = 6
ROLLUP_FILTERS = ("agent_id", "key_id", "provider", "model", "status")
GROUPINGS = ("day", "agent", "key", "model")

R = UsageRollup
FAILED = fn.SUM(peewee.Case(None, [(R.status != "completed", R.requests)], 0))
SUMS = (fn.SUM(R.requests), FAILED, fn.SUM(R.input_tokens), fn.SUM(R.output_tokens), fn.SUM(R.credits))


def balance_state(credits):
    credits = Decimal(str(credits))
    if credits <= 0:
        return "exhausted"
    return "low" if credits < LOW_BALANCE else "healthy"


def figures(requests, failed, input_tokens, output_tokens, credits):
    """One row of SUMS as plain numbers (credits exact, as a string)."""
    requests, failed = int(requests or 0), int(failed or 0)
    return {
        "requests": requests,
        "failed": failed,
        "error_rate": failed / requests if requests else 0.0,
        "input_tokens": int(input_tokens or 0),
        "output_tokens": int(output_tokens or 0),
        "credits": str(from_nano(int(credits or 0))),
    }


def window(range_name, now=None):
    """(first bucket start, bucket, period, step) of a chart range; its
    buckets run from the first to the one holding `now`."""
    if range_name not in CHART_RANGES:
        raise AdminError(400, "'range' must be one of " + ", ".join(CHART_RANGES) + ".")
    span, bucket = CHART_RANGES[range_name]
    now = now or utcnow()
    step = datetime.timedelta(hours=1) if bucket == "hour" else datetime.timedelta(days=1)
    first = (now - span).replace(minute=0, second=0, microsecond=0) + step
    if bucket == "day":
        first = first.replace(hour=0)
    return first, bucket, HOUR if bucket == "hour" else DAY, step


def since_text(t):
    """A time as the usage filters take it (on the hour: the rollups answer it)."""
    return t.strftime("%Y-%m-%dT%H:%M")


def kind_for(*dims):
    """The narrowest rollup kind keeping every dimension named."""
    return next(kind for kind, kept in KINDS.items() if set(dims) <= set(kept))


def in_window(first, period, where=()):
    """Rollup rows of `period` (HOUR or DAY, then the kind) from `first` on."""
    query = R.select().where(R.period == period, R.start >= first)
    for condition in where:
        query = query.where(condition)
    return query


def stacked_series(range_name, by="provider", where=(), now=None, kind="m"):
    """Requests and credits per bucket, each split by provider or model (the
    largest STACKED_GROUPS, the rest as "other"), oldest bucket first."""
    now = now or utcnow()
    first, bucket, period, step = window(range_name, now)
    period += kind
    group = R.provider if by == "provider" else R.model
    rows = (
        in_window(first, period, where)
        .select(R.start, group, fn.SUM(R.requests), fn.SUM(R.credits))
        .group_by(R.start, group)
        .tuples()
    )
    cells, spend = {}, {}
    for start, name, requests, credits in rows:
        cells[(start, name)] = (int(requests), int(credits or 0))
        before = spend.get(name, (0, 0))
        spend[name] = (before[0] + int(credits or 0), before[1] + int(requests))
    ranked = sorted(spend, key=lambda g: (-spend[g][0], -spend[g][1], g))
    shown = ranked[:STACKED_GROUPS] + (["other"] if len(ranked) > STACKED_GROUPS else [])
    slot = {name: min(i, STACKED_GROUPS) for i, name in enumerate(ranked)}
    series, t = [], first
    while t <= now:
        requests, credits = [0] * len(shown), [0] * len(shown)
        for name in ranked:
            r, c = cells.get((t, name), (0, 0))
            requests[slot[name]] += r
            credits[slot[name]] += c
        series.append(
            {
                "start": t.isoformat() + "Z",
                "requests": requests,
                "credits": [str(from_nano(c)) for c in credits],
                "total_requests": sum(requests),
                "total_credits": str(from_nano(sum(credits))),
            }
        )
        t += step
    return {"range": range_name, "bucket": bucket, "by": by, "groups": shown, "series": series, "since": since_text(first)}


def totals_chart(stacked):
    """The requests-and-credits chart's data (admin.usage_series' shape) from a stacked series."""
    series = [{"start": p["start"], "requests": p["total_requests"], "credits": p["total_credits"]} for p in stacked["series"]]
    return {"range": stacked["range"], "bucket": stacked["bucket"], "series": series}


def top(first, period, columns, where=(), limit=TOP):
    """The groups of `columns` with the most spend in the window, with their figures."""
    query = (
        in_window(first, period, where)
        .select(*columns, *SUMS)
        .group_by(*columns)
        .order_by(fn.SUM(R.credits).desc(), fn.SUM(R.requests).desc())
    )
    if limit:
        query = query.limit(limit)
    n = len(columns)
    return [dict(zip([c.name for c in columns], row[:n]), **figures(*row[n:])) for row in query.tuples()]


def window_totals(first, period, where=()):
    return figures(*in_window(first, period, where).select(*SUMS).tuples()[0])


def failures_by_status(first, period, where=()):
    query = (
        in_window(first, period, where)
        .where(R.status != "completed")
        .select(R.status, fn.SUM(R.requests))
        .group_by(R.status)
        .order_by(fn.SUM(R.requests).desc())
    )
    return [{"status": s, "requests": int(n)} for s, n in query.tuples()]


def agent_names():
    return {a.id: a.name for a in Agent.select(Agent.id, Agent.name)}


def key_labels():
    return {k.id: {"prefix": k.prefix, "name": k.name, "agent_id": k.agent_id} for k in ApiKey.select()}


def low_agents(limit=20):
    rows = Agent.select().where(Agent.credits < LOW_BALANCE).order_by(Agent.credits).limit(limit)
    return [{"id": a.id, "name": a.name, "credits": str(a.credits), "state": balance_state(a.credits)} for a in rows]


def today_start(now=None):
    return (now or utcnow()).replace(hour=0, minute=0, second=0, microsecond=0)


def overview(range_name, by="provider", now=None):
    now = now or utcnow()
    stacked = stacked_series(range_name, by, now=now)
    first, _, period, _ = window(range_name, now)
    names = agent_names()
    agents = top(first, period + "a", [R.agent_id])
    for row in agents:
        row["name"] = names.get(row["agent_id"], f"#{row['agent_id']}")
    return {
        "stacked": stacked,
        "chart": totals_chart(stacked),
        "today": window_totals(today_start(now), HOUR + "m"),
        "window": window_totals(first, period + "m"),
        "failures": failures_by_status(first, period + "m"),
        "top_agents": agents,
        "top_models": top(first, period + "m", [R.provider, R.model]),
        "low_agents": low_agents(),
        "agents": len(names),
    }


def agent_report(agent_id, range_name, by="model", now=None):
    now = now or utcnow()
    first, _, period, _ = window(range_name, now)
    where = (R.agent_id == int(agent_id),)
    labels = key_labels()
    by_key = top(first, period + "k", [R.key_id], where, limit=None)
    for row in by_key:
        row["key"] = labels.get(row["key_id"])
    return {
        "stacked": stacked_series(range_name, by, where, now, kind=""),
        "window": window_totals(first, period + "a", where),
        "by_model": top(first, period, [R.provider, R.model], where, limit=None),
        "by_key": by_key,
        "key_spend": {row["key_id"]: row for row in by_key},
    }


def key_spend(range_name="30d", now=None):
    """Each key's figures over a range: {key_id: figures}."""
    first, _, period, _ = window(range_name, now)
    return {row["key_id"]: row for row in top(first, period + "k", [R.key_id], limit=None)}


def agents_summary(now=None):
    """Per agent: spend today and this month, requests and error rate this
    month, active keys and the last time one of its keys was used."""
    now = now or utcnow()
    today = today_start(now)
    month = today.replace(day=1)
    spend_today = fn.SUM(peewee.Case(None, [(R.start >= today, R.credits)], 0))
    rows = in_window(month, DAY + "a").select(R.agent_id, spend_today, *SUMS).group_by(R.agent_id).tuples()
    summary = {}
    for agent_id, today_credits, *sums in rows:
        summary[agent_id] = {"today": str(from_nano(int(today_credits or 0))), "month": figures(*sums)}
    active = (ApiKey.revoked_at.is_null()) & (ApiKey.expires_at.is_null() | (ApiKey.expires_at > now))
    keys = ApiKey.select(ApiKey.agent, fn.SUM(peewee.Case(None, [(active, 1)], 0)), fn.MAX(ApiKey.last_used_at))
    for agent_id, active_keys, last_used in keys.group_by(ApiKey.agent).tuples():
        entry = summary.setdefault(agent_id, {})
        entry["active_keys"] = int(active_keys or 0)
        entry["last_used_at"] = None if last_used is None else str(last_used).replace(" ", "T")[:19] + "Z"
    return summary


# -- limits: how near agents and keys are to them ----------------------------

# A key is near its credit limit from this share of it spent in its period.
KEY_NEAR_SHARE = Decimal("0.8")
# The top-spenders view's ranges ("today": since midnight UTC).
SPEND_RANGES = ("today", "7d", "30d")


def key_periods(keys, now=None):
    """{key id: its credit-limit period} for the keys (key_dict) that have a
    credit limit: spent this period, the limit, the share used, when the
    period resets (None: never), and whether it is near (KEY_NEAR_SHARE)."""
    now = now or utcnow()
    limited = [k for k in keys if k["credit_limit"] is not None]
    spent = periods.key_spend({k["id"]: periods.period_start(k["limit_reset"], now) for k in limited})
    found = {}
    for k in limited:
        limit = Decimal(k["credit_limit"])
        share = spent[k["id"]] / limit if limit else Decimal(1)
        resets = periods.next_reset(k["limit_reset"], now)
        found[k["id"]] = {
            "spent": str(spent[k["id"]]), "limit": k["credit_limit"], "share": float(share),
            "reset": k["limit_reset"], "resets_at": None if resets is None else resets.isoformat() + "Z",
            "near": share >= KEY_NEAR_SHARE,
        }
    return found


def last_grants():
    """{agent id: its last grant} (the newest positive ledger row): what an
    alert threshold of "20%" is a share of."""
    newest = (CreditLedger.select(fn.MAX(CreditLedger.id)).where(CreditLedger.amount > 0)
              .group_by(CreditLedger.agent))
    return {r.agent_id: r.amount for r in CreditLedger.select().where(CreditLedger.id.in_(newest))}


def limit_facts(now=None):
    """What near_limits needs from the database, in three or four queries
    whatever the number of agents: last grants and the active limited keys'
    periods."""
    now = now or utcnow()
    active = (ApiKey.credit_limit.is_null(False) & ApiKey.revoked_at.is_null()
              & (ApiKey.expires_at.is_null() | (ApiKey.expires_at > now)))
    keys = [key_dict(k) for k in ApiKey.select().where(active)]
    return {"last_grants": last_grants(), "keys": keys, "periods": key_periods(keys, now)}


def threshold_amounts(thresholds, last_grant):
    """An agent's alert thresholds (["20%", "5"]) as amounts of credits; a
    share needs a last grant to be one."""
    amounts = []
    for percent, value in parse_thresholds(",".join(thresholds)):
        if not percent:
            amounts.append(value)
        elif last_grant:
            amounts.append(Decimal(last_grant) * value / 100)
    return amounts


def near_limits(agents, facts):
    """{agent id: [why it is near a limit]} for the agents (with their shown
    balance) near one: the balance at or below one of its alert thresholds
    or under LOW_BALANCE, or a key at KEY_NEAR_SHARE of its credit limit
    this period."""
    near = {}
    for agent in agents:
        credits = Decimal(agent["credits"])
        reasons = []
        crossed = [t for t in threshold_amounts(agent["alert_thresholds"], facts["last_grants"].get(agent["id"]))
                   if credits <= t]
        if crossed:
            reasons.append(f"balance at or below its alert threshold of {max(crossed).normalize():f}")
        elif credits < LOW_BALANCE:
            reasons.append(f"balance under {LOW_BALANCE}")
        if reasons:
            near[agent["id"]] = reasons
    for key in facts["keys"]:
        period = facts["periods"][key["id"]]
        if period["near"]:
            near.setdefault(key["agent_id"], []).append(
                f"key {key['prefix']}… has used {period['share'] * 100:.0f}% of its credit limit")
    return near


def spend_since(range_name, now=None):
    """The first day of a top-spenders range."""
    if range_name not in SPEND_RANGES:
        raise AdminError(400, "'range' must be one of " + ", ".join(SPEND_RANGES) + ".")
    now = now or utcnow()
    return today_start(now) if range_name == "today" else window(range_name, now)[0]


def top_spenders(range_name, limit=20, now=None):
    """The agents and the keys with the most spend over a range, from the
    daily rollups, with their names (one query each)."""
    first = spend_since(range_name, now)
    agents = top(first, DAY + "a", [R.agent_id], limit=limit)
    keys = top(first, DAY + "k", [R.key_id], limit=limit)
    labels = {k.id: k for k in ApiKey.select().where(ApiKey.id.in_([r["key_id"] for r in keys]))}
    agent_ids = {r["agent_id"] for r in agents} | {k.agent_id for k in labels.values()}
    names = {a.id: a.name for a in Agent.select(Agent.id, Agent.name).where(Agent.id.in_(list(agent_ids)))}
    for row in agents:
        row["name"] = names.get(row["agent_id"], f"#{row['agent_id']}")
    for row in keys:
        key = labels.get(row["key_id"])
        row["key"] = key and {"prefix": key.prefix, "name": key.name, "agent_id": key.agent_id,
                              "agent_name": names.get(key.agent_id, f"#{key.agent_id}")}
    return {"agents": agents, "keys": keys, "since": since_text(first)}


# -- the usage page: totals and groups from the rollups when they can answer --


def _aligned(t, period):
    return t is None or (t.minute == t.second == t.microsecond == 0 and (period == HOUR or t.hour == 0))


def rollup_filter(filters, *dims):
    """A query on the narrowest rollups standing for the usage records
    `filters` select (grouped by `dims`), or None when the rollups cannot
    answer (a time not on the hour, a route…)."""
    if any(v for f, v in filters.items() if v and f not in ROLLUP_FILTERS + ("since", "until")):
        return None
    since, until = parse_time(filters.get("since"), "since"), parse_time(filters.get("until"), "until")
    period = next((p for p in (DAY, HOUR) if _aligned(since, p) and _aligned(until, p)), None)
    if period is None:
        return None
    kind = kind_for(*dims, *(f for f in ROLLUP_FILTERS if filters.get(f)))
    query = where_ids(R.select().where(R.period == period + kind), R, filters)
    status = filters.get("status")
    if status:
        query = query.where(R.status != "completed" if status == "failed" else R.status == status)
    for field in ("provider", "model"):
        if filters.get(field):
            query = query.where(getattr(R, field) == filters[field])
    query = query.where(R.start >= since) if since else query
    return query.where(R.start < until) if until else query


def usage_totals(filters):
    """admin.usage_totals, from the rollups when they can answer."""
    query = rollup_filter(filters)
    if query is None:
        return records_totals(filters)
    found = figures(*query.select(*SUMS).tuples()[0])
    return {k: found[k] for k in ("requests", "input_tokens", "output_tokens", "credits")}


GROUP_COLUMNS = {
    "day": ((R.start,), ()),
    "agent": ((R.agent_id,), (UsageRecord.agent_id,)),
    "key": ((R.key_id,), (fn.COALESCE(UsageRecord.key_id, 0),)),
    "model": ((R.provider, R.model), (UsageRecord.provider, UsageRecord.model)),
}


def usage_groups(filters, by):
    """The filter's usage summed per day, agent, key or model, the largest spend first (days: newest first)."""
    if by not in GROUPINGS:
        raise AdminError(400, "'group' must be one of " + ", ".join(GROUPINGS) + ".")
    query = rollup_filter(filters, *(c.name for c in GROUP_COLUMNS[by][0] if c is not R.start))
    if query is not None:
        columns = GROUP_COLUMNS[by][0]
        rows = query.select(*columns, *SUMS).group_by(*columns).tuples()
    else:
        day = fn.SUBSTR(UsageRecord.started_at, 1, 10).coerce(False)
        columns = (day,) if by == "day" else GROUP_COLUMNS[by][1]
        failed = fn.SUM(peewee.Case(None, [(UsageRecord.status != "completed", 1)], 0))
        sums = (fn.COUNT(UsageRecord.id), failed) + tuple(
            fn.SUM(f) for f in (UsageRecord.input_tokens, UsageRecord.output_tokens, UsageRecord.credits)
        )
        rows = usage_query(filters).select(*columns, *sums).group_by(*columns).tuples()
    return merge_groups(rows, by, len(columns))


def merge_groups(rows, by, width):
    """Rows of (group columns…, SUMS…) as one dict per group; hours add up to days."""
    merged = {}
    for row in rows:
        key = (str(row[0])[:10],) if by == "day" else tuple(row[:width])
        sums = merged.setdefault(key, [0] * 5)
        for i, value in enumerate(row[width:]):
            sums[i] += int(value or 0)
    groups = [{"key": key, **figures(*sums)} for key, sums in merged.items()]
    if by == "day":
        return sorted(groups, key=lambda g: g["key"], reverse=True)
    return sorted(groups, key=lambda g: (-Decimal(g["credits"]), -g["requests"]))


def usage_record(request_id):
    """One usage record with every field, its agent's name and its key."""
    row = UsageRecord.get_or_none(UsageRecord.request_id == request_id)
    if row is None:
        raise AdminError(404, f"No usage record with request id {request_id}.")
    record = dict(usage_dict(row), credits=f"{row.credits:f}")
    agent = Agent.get_or_none(Agent.id == row.agent_id)
    record["agent_name"] = agent.name if agent else None
    record["key"] = key_labels().get(row.key_id) if row.key_id else None
    return record
