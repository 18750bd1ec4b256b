"""WebSocket routes under /proxy/<provider>/… (each provider's
`socket_routes`): one handler for all of them, the Tornado glue around
kylon/relay/websocket.py.

A session, in order: the Kylon key, the route's gate and the agent's
credits are checked on the upgrade request (a refusal is an HTTP error in
the provider's shape, and the SDK raises); once upgraded (and, when the
client's first message names the model, once that is in) the session is
admitted at the model's price (its hold), journaled, and the upstream is
connected with the operator's credential. Frames then pass both ways as they
arrive, one at a time, each seen by the route's meter. What the session has
used so far is billed into its hold after each frame and once a second:
other calls see it at once (other processes within a refresh), the journal
keeps it (a crash loses at most a second of it), and when it reaches what
the agent has, the session is closed with 4402. When either side closes or
breaks, the other is closed at once; a shutdown closes the sessions still
open at the end of its grace period (1001). Each session leaves one usage
record: its status, duration, usage and frames each way.

Close codes Kylon sends the client: 4000 + the HTTP status of a refusal
after the upgrade (4402: out of credits, 4403: gate), 1014 when the
upstream fails or refuses the session, 1001 at shutdown, else the
upstream's own.
"""

import asyncio
import logging
import re
import time

import tornado.httpclient
import tornado.websocket
from tornado.ioloop import PeriodicCallback

from .. import metrics
from ..billing import Usage, credits_for
from ..calls import admission
from ..calls.admission import without_kylon_keys
from ..calls.headers import upstream_header_pairs
from ..calls.record import CallState
from ..models import UsageStatus, utcnow
from ..providers import Exchange
from ..relay import websocket as relay_ws
from .base import BaseHandler
from .recorded import RecordedCall

log = logging.getLogger("kylon.sockets")

# The status of a session's record once it was upgraded (HTTP 101).
SWITCHED = 101
OUT_OF_CREDITS = 4402
OUT_OF_CREDITS_REASON = "Out of credits: this session has used what the agent has."
GOING_AWAY = 1001
# How often a session's usage is billed besides after each frame (a meter may bill by time).
BILL_SECONDS = 1.0
# A close frame's reason: at most 123 bytes (RFC 6455 5.5).
MAX_REASON_BYTES = 123


def close_reason(text):
    return text.encode("utf-8")[:MAX_REASON_BYTES].decode("utf-8", "ignore")


class SocketHandler(RecordedCall, tornado.websocket.WebSocketHandler, BaseHandler):
    def initialize(self, provider, route):
        self.provider = provider
        self.route = route
        self.error_body = provider.error_body
        self.exchange = None
        self.call = None  # calls.record.CallState, once authenticated
        self.meter = None
        self.upstream = None  # tornado.websocket.WebSocketClientConnection, once connected
        self.opened = False
        self.closing = False  # the session is over (recorded), its sides closing
        self.base_hold = 0  # credits held for what the session may still use
        self.billed = None  # the usage last billed into the hold
        self.ticker = None
        self.relaying = None  # the task passing the upstream's frames on (kept: asyncio holds tasks weakly)

    def check_origin(self, origin):
        # Sessions authenticate with a key, never a cookie: a page elsewhere cannot borrow one.
        return True

    # -- before the upgrade ------------------------------------------------------
    async def prepare(self):
        services = self.services
        provider, route = self.provider, self.route
        started_at, t0 = utcnow(), time.monotonic()
        # The path as the client sent it, still percent-encoded.
        path = self.request.path[len("/proxy/") + len(provider.name) :]
        exchange = self.exchange = Exchange(request_id=self.request_id, route=route, path=path, stream=True)
        if (self.request.headers.get("Upgrade") or "").lower() != "websocket":
            return self.send_kylon_error(426, f"{path} is a WebSocket route: connect with a WebSocket client.",
                                         headers={"Upgrade": "websocket"})
        admitted = await self.admit_key()
        if admitted is None:
            return
        key, agent = admitted
        balance = services.balances.of(agent.agent_id)
        self.call = call = CallState(self.request_id, provider, key, agent, exchange, started_at, t0, balance)
        if key.credit_limit is not None:
            call.key_balance = services.cache.key_limits.current(key)
        services.open_calls.add(self)
        refusal = admission.check_call(provider, route, True, path, "GET", agent.skills, balance,
                                       services.cache.gates, call.key_balance)
        if refusal is not None:
            return self.reject(refusal)
        # A session is one request, and one call at once while it is open.
        if not await self.admit_rates(key, agent):
            return
        query = provider.upstream_query(self.request.query)
        if route.upstream_query is not None:
            query = route.upstream_query(exchange, query)
        exchange.query = without_kylon_keys(query)
        self.meter = route.meter(exchange)

    async def authenticate(self):
        # A session may stand on something Kylon issued to a key (ElevenLabs'
        # signed conversation URLs) rather than on the key itself.
        if self.route.authenticate is not None:
            found = await self.route.authenticate(self)
            if found is not None:
                return found
        return await super().authenticate()

    async def get(self, *args, **kwargs):
        await super().get(*args, **kwargs)
        call = self.call
        if not self.opened and call is not None and not call.recorded:
            # Tornado refused the handshake itself (a bad Sec-WebSocket-Version) and said why.
            self.reject(admission.Refusal(400, "Not a valid WebSocket handshake."), send=False)

    # -- the session ---------------------------------------------------------------
    async def open(self, *args):
        self.opened = True
        metrics.child(metrics.OPEN_SOCKETS, self.provider.name).inc()
        if not self.route.model_in_first_message:
            # Tornado reads no message before open() returns: none waits in Kylon meanwhile.
            await self.start_upstream()

    async def on_message(self, message):
        """A client frame; Tornado reads the next one once this returns (back-pressure)."""
        if self.closing:
            return
        self.call.client_frames += 1
        replaced = self.meter.client_message(message)
        if replaced is not None:
            # The meter rewrote the frame (ElevenLabs: a key in a message taken out).
            message = replaced
        if self.upstream is None and not await self.start_upstream():
            return
        if not self.bill():
            return
        metrics.child(metrics.SOCKET_FRAMES, self.provider.name, self.call.route_name, "client").inc()
        try:
            await self.upstream.write_message(message, binary=isinstance(message, bytes))
        except tornado.websocket.WebSocketClosedError:
            pass  # the upstream has gone: relay_upstream ends the session

    async def start_upstream(self):
        """Admit the session at its model's price, journal it and connect
        upstream; False when the session ended instead."""
        if self.closing:
            return False
        services, provider, exchange = self.services, self.provider, self.exchange
        # The model is known now (the URL's, or the client's first message's):
        # the admission that depends on it joins here.
        call = self.call
        refusal = None
        if call.key.limits.models or call.agent.limits.models:
            refusal = admission.check_model(provider.name, exchange.model, call.key, call.agent)
        refusal = refusal or self.hold_credits(self.route.hold(exchange) if self.route.hold is not None else Usage())
        if refusal is not None:
            self.reject(refusal, send=False)
            self.closing = True
            self.close(4000 + refusal.status, close_reason(refusal.message))
            return False
        self.base_hold = self.call.held
        services.writer.open_call(self.call)  # journaled before anything goes upstream
        path = self.route.upstream_path(exchange) if self.route.upstream_path is not None else exchange.path
        url = relay_ws.websocket_url(provider.base_url + provider.upstream_prefix + path)
        if exchange.query:
            url += "?" + exchange.query
        headers = upstream_header_pairs(self.request.headers, provider, services.key_headers)
        try:
            upstream = await relay_ws.connect(url, headers, services.settings.connect_timeout, self.max_message_size)
        except tornado.httpclient.HTTPClientError as e:
            if e.code == 599:  # Tornado's time-out
                self.end(UsageStatus.ERROR, 504, relay_ws.BAD_GATEWAY, "The upstream did not answer in time.",
                         error="upstream handshake timed out", metric="timeout")
            else:
                kind = "http_4xx" if e.code < 500 else "http_5xx"
                self.end(UsageStatus.UPSTREAM_ERROR, e.code, relay_ws.BAD_GATEWAY,
                         f"The upstream refused the session (HTTP {e.code}).", metric=kind)
            return False
        except Exception as e:
            self.end(UsageStatus.ERROR, 502, relay_ws.BAD_GATEWAY, "The upstream could not be reached.",
                     error=str(e) or type(e).__name__, metric="unreachable")
            return False
        if self.closing:
            # The client left, or Kylon stopped, while the upstream was connecting.
            upstream.close(GOING_AWAY)
            return False
        self.upstream = upstream
        self.exchange.response_headers = upstream.headers
        self.call.upstream_status = SWITCHED
        self.ticker = PeriodicCallback(self.bill, BILL_SECONDS * 1000)
        self.ticker.start()
        self.relaying = asyncio.ensure_future(self.relay_upstream(upstream))
        return True

    async def relay_upstream(self, upstream):
        try:
            await relay_ws.pass_frames(upstream.read_message, self.upstream_frame, self.write_message)
        except tornado.websocket.WebSocketClosedError:
            return  # the client has gone: on_close ends the session
        except Exception:
            log.exception("relaying session %s failed", self.request_id)
            return self.end(UsageStatus.ERROR, SWITCHED, 1011, "Internal error in Kylon.", error="internal error")
        if self.closing:
            return
        code, reason = upstream.close_code, upstream.close_reason or ""
        if code is None:
            self.end(UsageStatus.ERROR, SWITCHED, relay_ws.BAD_GATEWAY, "The upstream connection was lost.",
                     error="upstream connection lost", metric="broken")
        elif code == 1000:
            self.end(UsageStatus.COMPLETED, SWITCHED, 1000, reason)
        else:
            self.end(UsageStatus.UPSTREAM_ERROR, SWITCHED, relay_ws.sendable_code(code), reason,
                     error=f"upstream closed the session: {code} {reason}".strip(), metric="in_stream")

    def upstream_frame(self, message):
        """An upstream frame, before it goes on to the client; False stops the relay."""
        call = self.call
        if call.first_byte_at is None:
            call.first_byte_at = time.monotonic()
        call.upstream_frames += 1
        self.meter.upstream_message(message)
        metrics.child(metrics.SOCKET_FRAMES, self.provider.name, call.route_name, "upstream").inc()
        return self.bill()

    def bill(self):
        """What the session has used so far, billed into its hold (the hold
        is the admitted hold plus that use); True while the agent covers it."""
        if self.closing:
            return False
        usage = self.meter.usage()
        if usage is None or usage == self.billed:
            return True
        self.billed = Usage(**vars(usage))  # a copy: a meter may change its own
        exchange, call = self.exchange, self.call
        exchange.usage, exchange.usage_final = usage, True
        used = credits_for(usage, self.price())
        # What the agent (and a key with a credit limit) has, less every other call's hold.
        ledgers = [call.balance] + ([call.key_balance] if call.key_balance is not None else [])
        for ledger in ledgers:
            ledger.release(call.held)
        may_use = min(ledger.available for ledger in ledgers)
        call.held = self.base_hold + used
        for ledger in ledgers:
            ledger.hold(call.held)
        if used >= may_use:
            self.end(UsageStatus.OUT_OF_CREDITS, 402, OUT_OF_CREDITS, OUT_OF_CREDITS_REASON,
                     error="out of credits: the session was closed")
            return False
        return True

    # -- the end ---------------------------------------------------------------------
    def end(self, status, http_status, code, reason, error="", metric=""):
        """The session is over: its one record, both sides closed (`code` and
        `reason` for the client; None when it has gone)."""
        if self.closing:
            return
        self.closing = True
        if self.ticker is not None:
            self.ticker.stop()
        if self.opened:
            metrics.child(metrics.OPEN_SOCKETS, self.provider.name).dec()
        if metric == "disconnect":
            metrics.child(metrics.CLIENT_DISCONNECTS, self.provider.name, self.call.route_name).inc()
        elif metric:
            metrics.child(metrics.UPSTREAM_ERRORS, self.provider.name, self.call.route_name, metric).inc()
        usage = self.meter.usage() if self.meter is not None else None
        self.record(status, http_status, usage if usage is not None else Usage(), error=error or reason)
        if self.upstream is not None:
            self.upstream.close(1000)
        if code is not None:
            self.close(code, close_reason(reason))

    def on_close(self):
        """The client closed the session (a close frame), or its connection broke."""
        if self.close_code is None:
            self.end(UsageStatus.DISCONNECTED, SWITCHED, None, "", error="client connection lost", metric="disconnect")
        else:
            self.end(UsageStatus.COMPLETED, SWITCHED, None, "")

    def interrupt(self):
        """Shutdown's grace period is over: close the session (recorded as interrupted)."""
        if self.call is not None:
            self.end(UsageStatus.INTERRUPTED, SWITCHED, GOING_AWAY, "Kylon is shutting down.", error="shutdown")


def socket_rules(providers):
    """One URL rule per provider WebSocket route, before the generic proxy rule."""
    rules = []
    for provider in providers.values():
        for route in provider.socket_routes:
            pattern = "/proxy/" + re.escape(provider.name) + route.path
            rules.append((pattern, SocketHandler, {"provider": provider, "route": route}))
    return rules
