"""The agent's own view: `GET /proxy/kylon/v1/key` with its own Kylon key
(`Authorization: Bearer pak_…` or `x-api-key`), no admin token. It shows the
agent's balance and what its running calls hold, and the key's credit limit,
its spend this period and when it resets, rate limits and allowed models;
nothing about other agents. Free: no usage record, nothing billed.

Figures come from memory (credits.Balances, credits.KeyLimits), as admission
sees them; only a key with no credit limit has its spend read from the
database (the ledger keeps none for it), which lags by one flush interval.
"""

import logging

from .. import metrics
from ..calls import admission
from ..credits import ZERO
from ..models import NANO_QUANTUM
from ..periods import key_spend, next_reset, period_start
from ..providers.base import key_from_headers
from .base import BaseHandler

log = logging.getLogger("kylon.agent_view")


def credits(value):
    return None if value is None else f"{value.quantize(NANO_QUANTUM):f}"


def moment(value):
    return None if value is None else value.isoformat() + "Z"


class AgentViewHandler(BaseHandler):
    async def get(self):
        services = self.services
        try:
            key, agent = await services.cache.lookup(key_from_headers(self.request))
        except Exception as e:
            log.warning("key lookup failed: %s", e)
            return self.send_kylon_error(503, "Kylon cannot check this key right now (database unavailable).")
        if key is None:
            return await self.refuse_key(reason=agent)
        balance = services.balances.of(agent.agent_id)
        # What is left of each rate limit, and when it resets.
        rates = services.ratelimits.status(key, agent)
        self.write_json({
            "agent": {
                "id": agent.agent_id,
                "name": agent.name,
                "balance": credits(balance.balance),
                "held": credits(balance.held + balance.held_elsewhere),
                "available": credits(balance.available),
                "skills": sorted(agent.skills),
                "allowed_models": list(agent.limits.models),
                "rate_limits": rates["agent"],
            },
            "key": {
                "id": key.key_id,
                "name": key.name,
                "prefix": key.prefix,
                "expires_at": moment(key.expires_at),
                "credit_limit": credits(key.credit_limit),
                "limit_reset": key.limit_reset,
                **(await self.key_period(key)),
                "allowed_models": list(key.limits.models),
                "rate_limits": rates["key"],
            },
        })

    async def key_period(self, key):
        """The key's period figures: from the ledger for a key with a credit
        limit; a key without one holds nothing of its own, and its spend is
        what the database has."""
        key_limits = self.services.cache.key_limits
        if key.credit_limit is not None:
            b = key_limits.current(key)
            spent, held, remaining, start, resets_at = (
                b.spent_this_period, b.held_total, max(b.available, ZERO), b.period_start, b.resets_at)
        else:
            now = key_limits.clock()
            start, resets_at = period_start(key.limit_reset, now), next_reset(key.limit_reset, now)
            spent = (await self.services.db.run(key_spend, {key.key_id: start}))[key.key_id]
            held = remaining = None
        return {"spent_this_period": credits(spent), "held": credits(held), "remaining": credits(remaining),
                "period_start": moment(start), "resets_at": moment(resets_at)}

    async def refuse_key(self, reason):
        """A bad key: 401 as on the proxy routes, under the same per-address throttle."""
        metrics.child(metrics.REJECTED, "kylon", "key").inc()
        if await self.throttled_check(self.services.bad_keys, lambda: False, admission.BAD_KEYS_THROTTLED) is not None:
            presented = bool(key_from_headers(self.request))
            refusal = admission.key_refusal(reason, presented)
            self.send_kylon_error(refusal.status, refusal.message)


default_handlers = [(r"/proxy/kylon/v1/key", AgentViewHandler)]
