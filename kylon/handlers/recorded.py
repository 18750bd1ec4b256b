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

log = logging.getLogger("kylon.proxy")


class RecordedCall:
    # Messages for key-lookup failures of a subclass's own (see admission.key_refusal).
    key_refusal_messages = None

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
            self.send_kylon_error(refusal.status, refusal.message)
        self.record(UsageStatus.REJECTED, refusal.status, Usage(), error=refusal.message)

    def price(self):
        exchange = self.exchange
        return self.services.pricebook.price(self.provider.name, exchange.price_model or exchange.model)[0]

    def hold_credits(self, usage):
        """Hold what `usage` costs at the call's price while it runs (released
        in record()); a Refusal when the agent cannot cover it."""
        call = self.call
        hold, refusal = admission.check_hold(usage, self.price(), call.balance.available)
        if refusal is None:
            call.balance.hold(hold)
            call.held = hold
        return refusal

    def release(self, call):
        """The call is over: its hold goes back, it is no longer open."""
        call.recorded = True
        self.services.open_calls.discard(self)
        if call.held:
            call.balance.release(call.held)
            call.held = 0

    def record(self, status, http_status, usage, error=""):
        """The call's one usage record, priced and handed to the batch writer."""
        call = self.call
        if call is None or call.recorded:
            return
        self.release(call)
        services = self.services
        upstream_id = upstream_request_id(self.provider, self.exchange.response_headers)
        record, observations = build_record(
            call, status, http_status, usage, services.pricebook, time.monotonic(), error or "", upstream_id
        )
        metrics.observe(observations)
        services.writer.add(record)


def _wrong():
    return False
