"""What every proxied call shares, HTTP or WebSocket: its Kylon key checked
(and refused in the provider's error shape, ever more slowly as one address
keeps sending bad ones), and its one usage record, its hold released.

A handler using this mixin sets `self.provider`, `self.exchange` and, once
authenticated, `self.call` (calls.record.CallState).
"""

import logging
import time

from .. import metrics
from ..billing import Usage
from ..calls import admission
from ..calls.headers import upstream_request_id
from ..calls.record import build_record
from ..models import UsageStatus
from ..ratelimits import Claim, Ticket, rate_limited

log = logging.getLogger("kylon.proxy")


class RecordedCall:
    # Messages for key-lookup failures of a subclass's own (see admission.key_refusal).
    key_refusal_messages = None
    # ratelimits.Ticket of a call admitted under a rate limit (the proxy's).
    rate = None

    async def admit_key(self):
        """(KeyEntry, AgentEntry) of the call's Kylon key, or None once the
        refusal has been sent."""
        try:
            key, agent = await self.authenticate()
        except Exception as e:
            # Only a key not seen before needs the database; known keys keep working.
            log.warning("key lookup failed: %s", e)
            self.send_kylon_error(503, "Kylon cannot check this key right now (database unavailable).")
            return None
        if key is None:
            await self.refuse_key(agent)
            return None
        return key, agent

    async def refuse_key(self, reason):
        """A bad key: 401, answered ever more slowly as one address keeps
        sending them, 429 while several already wait (the admin token's
        policy). A good key does not clear the count: one valid key must not
        buy an address fresh guesses."""
        metrics.child(metrics.REJECTED, self.provider.name, "key").inc()
        if await self.throttled_check(self.services.bad_keys, _wrong, admission.BAD_KEYS_THROTTLED) is not None:
            presented = bool(self.provider.client_key(self.request))
            refusal = admission.key_refusal(reason, presented, self.key_refusal_messages)
            self.send_kylon_error(refusal.status, refusal.message)

    async def authenticate(self):
        """(KeyEntry, AgentEntry) for the call's Kylon key, or (None, reason).
        A subclass may accept a call that stands on something Kylon issued to
        a key instead (Gemini's resumable upload sessions)."""
        return await self.services.cache.lookup(self.provider.client_key(self.request))

    def reject(self, refusal, send=True):
        """Refuse an authenticated call before it goes upstream; it is recorded."""
        metrics.child(metrics.REJECTED, self.provider.name, refusal.reason).inc()
        if send:
            self.send_kylon_error(refusal.status, refusal.message, refusal.code, refusal.headers)
        self.record(UsageStatus.REJECTED, refusal.status, Usage(), error=refusal.message)

    async def admit_rates(self, key, agent):
        """The call counts against the rpm and concurrency limits of its key
        and agent (kylon/ratelimits.py); False once it has been refused, or
        the client left while it waited for a lease."""
        if not (rate_limited(key.limits) or rate_limited(agent.limits)):
            return True
        rates = self.services.ratelimits
        ticket = rates.admit_now(key, agent)
        if isinstance(ticket, Claim):
            ticket = await rates.admit(key, agent)
            if self.call.recorded:  # the client left meanwhile
                if isinstance(ticket, Ticket):
                    rates.end(ticket, 0)
                return False
        if isinstance(ticket, admission.Refusal):
            self.reject(ticket)
            return False
        self.rate = ticket
        return True

    def price(self):
        exchange = self.exchange
        return self.services.pricebook.price(self.provider.name, exchange.price_model or exchange.model)[0]

    def hold_credits(self, usage):
        """Hold what `usage` costs at the call's price while it runs (released
        in record()), on the agent and on a key with a credit limit; a Refusal
        when either cannot cover it."""
        call = self.call
        hold, refusal = admission.check_hold(usage, self.price(), call.balance, call.key_balance)
        if refusal is None:
            call.balance.hold(hold)
            if call.key_balance is not None:
                call.key_balance.hold(hold)
            call.held = hold
        return refusal

    def release(self, call, used_tokens=0):
        """The call is over: its hold goes back, it is no longer open, its
        rate-limit counters have the tokens it used instead of its hold."""
        call.recorded = True
        self.services.open_calls.discard(self)
        if call.held:
            call.balance.release(call.held)
            if call.key_balance is not None:
                call.key_balance.release(call.held)
            call.held = 0
        if self.rate is not None:
            self.services.ratelimits.end(self.rate, used_tokens)

    def record(self, status, http_status, usage, error=""):
        """The call's one usage record, priced and handed to the batch writer."""
        call = self.call
        if call is None or call.recorded:
            return
        self.release(call, usage.input_tokens + usage.output_tokens)
        services = self.services
        upstream_id = upstream_request_id(self.provider, self.exchange.response_headers)
        record, observations = build_record(
            call, status, http_status, usage, services.pricebook, time.monotonic(), error or "", upstream_id
        )
        metrics.observe(observations)
        services.writer.add(record, call.key_balance)


def _wrong():
    return False
