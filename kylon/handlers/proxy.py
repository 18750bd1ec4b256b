"""One handler for every provider route under /proxy/<provider>/…: the Tornado
glue around the pieces of kylon/calls that decide (relaying the answer to
the client is its mixin, handlers/answer.py).

The order of a call: find the provider and route → authenticate the Kylon key
→ admission (path, method, configuration, gate, credits, size, rate limits;
the allowed models once the model is known) → read and check the body →
hold the call's likely tokens (tpm limits) and cost → forward with the
operator's credential → relay the answer as it arrives while the meter reads
usage → classify the outcome → the usage record. Every call that got past
authentication leaves exactly one usage record, whatever happens after, but
for a body the HTTP layer refuses as malformed (counted instead).

A provider's own handlers (Gemini's uploads) subclass this one and override
its hooks: `authenticate`, `shape_response_headers`, `error_headers`; a call
of several upstream calls (Gemini's upload URLs) overrides `forward` and
still ends through `call_upstream` and `finish_call`.
"""

import asyncio
import logging
import time

import tornado.web

from .. import metrics, relay
from ..billing import Usage, credits_for
from ..calls import admission, outcome as outcomes
from ..calls.admission import Refusal, without_kylon_keys
from ..calls.headers import upstream_header_pairs
from ..calls.record import CallState
from ..meter import ResponseMeter, settle_usage
from ..models import UsageStatus, utcnow
from ..providers import Exchange
from ..ratelimits import Claim
from ..server import refused_as_malformed
from .answer import AnswerRelay
from .base import BaseHandler
from .recorded import RecordedCall

log = logging.getLogger("kylon.proxy")

# A raw body (an upload: multipart form, file bytes) larger than this goes
# upstream as it arrives rather than held whole (relay.BodyStream). The
# provider sees this first part only (prepare_request): enough for the text
# fields of a multipart form, which clients send before the files. JSON bodies
# are always read whole.
STREAM_BODY_AFTER = 256 * 1024


@tornado.web.stream_request_body
class ProxyHandler(RecordedCall, AnswerRelay, BaseHandler):
    def initialize(self):
        self.provider = None
        self.exchange = None
        self.call = None  # calls.record.CallState, once authenticated
        self.rate = None  # ratelimits.Ticket, once admitted under a rate limit
        self.upstream = None  # relay.UpstreamCall, once under way
        self.meter = None
        self.client_gone = False
        self.interrupted = False
        self.body_chunks = []
        self.body_size = 0
        self.body_read = False
        self.upload = None  # relay.BodyStream once the body streams upstream
        self.forwarding = None  # the call, when it started before the body ended
        self.headers_sent = False
        self.streaming = False
        self.flush_scheduled = False
        self.model_checked = False

    # -- admission ----------------------------------------------------------
    async def prepare(self):
        services = self.services
        name = self.path_args[0]
        # The path as the client sent it, still percent-encoded: it goes
        # upstream as is (Tornado's path_args are decoded).
        path = self.request.path[len("/proxy/") + len(name) :]
        provider = services.providers.get(name)
        if provider is None:
            return self.send_kylon_error(404, f"Unknown provider '{name}'.")
        started_at, t0 = utcnow(), time.monotonic()
        self.provider = provider
        self.error_body = provider.error_body
        route, allowed = provider.match(path, self.request.method)
        query = without_kylon_keys(provider.upstream_query(self.request.query))
        self.exchange = Exchange(request_id=self.request_id, route=route, path=path, query=query)
        headers = self.request.headers
        refusal = admission.check_framing(headers.get("Content-Length"), headers.get("Transfer-Encoding"))
        if refusal is not None:
            # The HTTP layer refuses it too: counted, never recorded on the key's agent.
            metrics.child(metrics.MALFORMED, provider.name).inc()
            return self.send_kylon_error(refusal.status, refusal.message)
        admitted = await self.admit_key()
        if admitted is None:
            return
        key, agent = admitted
        balance = services.balances.of(agent.agent_id)
        self.call = call = CallState(self.request_id, provider, key, agent, self.exchange, started_at, t0, balance)
        if key.credit_limit is not None:
            call.key_balance = services.cache.key_limits.current(key)
        services.open_calls.add(self)
        limit = services.settings.max_body_bytes
        method = self.request.method
        refusal = admission.check_call(
            provider, route, allowed, path, method, agent.skills, balance, services.cache.gates, call.key_balance
        ) or admission.check_declared_size(self.request.headers.get("Content-Length"), limit)
        if refusal is not None:
            return self.reject(refusal)
        refusal = self.check_path_model(route, path)
        if refusal is not None:
            return self.reject(refusal)
        # Rate limits, after the checks above: a call they refuse anyway
        # spends none of the minute's requests.
        if not await self.admit_rates(key, agent):
            return
        # Kylon's own check (data_received) answers 413; Tornado's guard, set
        # higher, only catches a single chunk far beyond the limit (with a 400).
        self.request.connection.set_max_body_size(2 * limit)

    # -- allowed models (docs/controls.md) -------------------------------------
    def check_path_model(self, route, path):
        """Before the body: a model named in the path (Gemini's calls, a model's
        retrieve) checked against the allow-lists; a listing learns what to keep."""
        call = self.call
        if not (call.key.limits.models or call.agent.limits.models):
            return None
        if route is not None and route.models == "list":
            self.exchange.model_allowed = admission.model_filter(self.provider.name, call.key, call.agent)
            return None
        model = self.provider.path_model(route, path)
        if model is None:
            return None
        self.exchange.model = model
        return self.check_model()

    def check_model(self):
        """The allow-lists' Refusal for the call's model, checked once, as soon
        as it is known; None when the call may go on (or involves no model)."""
        call, exchange = self.call, self.exchange
        if self.model_checked or not (call.key.limits.models or call.agent.limits.models):
            return None
        self.model_checked = True
        route = exchange.route
        uses = route.models if route is not None else ("call" if exchange.model else "")
        if uses not in ("call", "get"):
            return None
        refusal = admission.check_model(self.provider.name, exchange.model, call.key, call.agent)
        if refusal is not None and uses == "get":
            # As the provider answers a model the account cannot see.
            return Refusal(404, f"The model '{exchange.model}' does not exist or you do not have access to it "
                                f"(not among the models this Kylon key may call).", "model")
        return refusal

    def data_received(self, chunk):
        if self._finished:
            return
        self.body_size += len(chunk)
        if self.body_size > self.services.settings.max_body_bytes:
            if self.upstream is not None:
                self.upstream.cancel()
            self.reject(Refusal(413, "Request body too large.", "too_large"))
            self.body_chunks = []
            return
        if self.upload is not None:
            self.exchange.request_bytes = max(self.exchange.request_bytes, self.body_size)
            # A Future while the upstream lags behind: Tornado then waits to read on.
            return self.upload.feed(chunk)
        self.body_chunks.append(chunk)
        if self.body_size > STREAM_BODY_AFTER and self.streams_body():
            self.upload = relay.BodyStream(int(self.request.headers.get("Content-Length") or 0) or None)
            self.forwarding = asyncio.ensure_future(self.run_call())

    def streams_body(self):
        route = self.exchange.route
        return (
            route is not None
            and route.body == "raw"
            and self.request.method in ("POST", "PUT", "PATCH")
            and "json" not in (self.request.headers.get("Content-Type") or "").lower()
        )

    # -- the call -----------------------------------------------------------
    async def get(self, *args):
        self.body_read = True
        if self.upload is not None:
            # The call is under way, its body streaming upstream: that body is complete.
            self.upload.end()
            await self.forwarding
        else:
            await self.run_call()

    post = put = patch = delete = head = options = get

    async def run_call(self):
        try:
            await self.forward()
        except Exception:
            # A bug must not lose the call's record, nor leave the client hanging.
            log.exception("proxy call %s failed", self.request_id)
            if not self.headers_sent:
                self.send_kylon_error(500, f"Internal error in Kylon (request id {self.request_id}).")
            elif not self._finished:
                self.finish()
            if self.exchange is not None:
                usage = settle_usage(self.exchange, finished=False)
                self.record(UsageStatus.ERROR, 500, usage, error="internal error")
        finally:
            if self.upload is not None:
                # Refused before going upstream, or done: the rest of the body is dropped.
                self.upload.close()

    def finish(self, chunk=None):
        if not self.body_read and not self._headers_written:
            # Answered before the request body was read (a refusal in
            # prepare): Tornado then closes the connection without saying so,
            # and a keep-alive client would send its next call into it.
            self.set_header("Connection", "close")
        return super().finish(chunk)

    async def forward(self):
        if self._finished:
            return
        exchange = self.exchange
        provider = self.provider
        body = b"".join(self.body_chunks)
        self.body_chunks = None
        exchange.request_bytes = max(len(body), self.upload.length or 0) if self.upload else len(body)
        if exchange.route is not None and exchange.route.body == "json":
            body, refusal = self.read_json(body)
            if refusal is not None:
                return self.reject(refusal)
        if exchange.route is not None and exchange.route.lifecycle:
            # A stored response the call names must be the agent's (kylon/responses.py).
            refusal = await self.services.responses.admit(self.call)
            if refusal is not None:
                return self.reject(refusal)
        refusal = await provider.ready(exchange)
        if refusal is not None:
            return self.reject(Refusal(refusal[0], refusal[1], "provider"))
        body = provider.prepare_request(exchange, body)
        refusal = self.check_model()  # the model is known now, from the body or the path
        if refusal is not None:
            return self.reject(refusal)
        hold = provider.hold_usage(exchange)
        if self.rate is not None:
            refusal = await self.hold_tokens(hold)
            if refusal is not None:
                return self.reject(refusal)
        refusal = self.hold_credits(hold)
        if refusal is not None:
            return self.reject(refusal)
        self.services.writer.open_call(self.call)  # journaled before anything goes upstream
        if self.upload is not None:
            # What the provider saw goes first; the rest follows as it arrives.
            self.upload.put_first(body)
            body = self.upload
        self.meter = ResponseMeter(exchange) if exchange.route is not None else None
        method = self.request.method
        headers = upstream_header_pairs(self.request.headers, provider, self.services.key_headers)
        body = body if (body or method in ("POST", "PUT", "PATCH")) else None
        transfer = await self.call_upstream(
            method, provider.upstream_url(exchange), headers, body, self.upstream_headers_arrived, self.upstream_chunk
        )
        self.finish_call(transfer)

    def kylon_base(self):
        """Where the client reaches Kylon, for URLs Kylon hands out."""
        return self.provider.public_url or f"{self.request.protocol}://{self.request.host}"

    def read_json(self, body):
        """(the body to send, None) or (None, Refusal): see admission.read_request."""
        return admission.read_request(self.provider, self.exchange, body)

    async def hold_tokens(self, hold):
        """The tokens the call may use count against its tokens-a-minute
        limits while it runs (replaced by its usage in record()); a Refusal
        when a limit has not that many left."""
        rates = self.services.ratelimits
        refusal = rates.hold_now(self.rate, hold.input_tokens + hold.output_tokens)
        if isinstance(refusal, Claim):
            refusal = await rates.hold(self.rate, hold.input_tokens + hold.output_tokens)
        return refusal

    async def call_upstream(self, method, url, headers, body, on_headers, on_chunk):
        """One upstream call with Kylon's time-outs, kept in self.upstream so
        that a client leaving or a shutdown can cancel it; returns how the
        transfer ended."""
        settings = self.services.settings
        self.upstream = relay.UpstreamCall(
            method, url, headers, body, on_headers=on_headers, on_chunk=on_chunk,
            connect_timeout=settings.connect_timeout, first_byte_timeout=settings.first_byte_timeout,
            idle_timeout=settings.idle_timeout,
        )
        if self.client_gone or self.interrupted:
            self.upstream.cancel()
        return await self.upstream.run()

    # -- the answer -----------------------------------------------------------
    def finish_call(self, transfer):
        """The transfer has ended: classify it, record it, end the answer."""
        exchange, meter = self.exchange, self.meter
        status = self.upstream.status or 0
        tail = meter.close() if meter is not None else b""
        if self.streaming:
            metrics.child(metrics.ACTIVE_STREAMS, self.provider.name).dec()
        scanned = meter is not None and meter.scanner is not None
        whole = outcomes.whole_answer_sent(
            status, scanned, exchange.usage_final, exchange.stream_done, exchange.stream_error
        )
        facts = outcomes.Facts(
            transfer, status, self.client_gone, self.interrupted, self.headers_sent, whole,
            stream_error=exchange.stream_error, transfer_error=self.upstream.error or "",
            bad_answer=meter.answer_problem if meter is not None else "",
        )
        outcome = outcomes.classify(facts)
        usage = Usage() if outcome.usage == outcomes.NOTHING else settle_usage(exchange, outcome.usage == outcomes.FINAL)
        if outcome.answer == "complete" and meter is not None and meter.reshapes:
            # The route answers in a shape of its own (Gemini's helpers).
            tail = meter.reshaped(usage, credits_for(usage, self.price()))
        self.count(outcome.metric)
        self.record(outcome.status, outcome.http_status, usage, error=outcome.error)
        self.deliver(outcome.answer, tail)

    def count(self, metric):
        label = (self.provider.name, self.call.route_name)
        if metric == "disconnect":
            metrics.child(metrics.CLIENT_DISCONNECTS, *label).inc()
        elif metric:
            metrics.child(metrics.UPSTREAM_ERRORS, *label, metric).inc()

    # -- bookkeeping ---------------------------------------------------------
    def on_connection_close(self):
        self.client_gone = True
        call = self.call
        if self.upstream is None and not self.body_read and call is not None and not call.recorded:
            if refused_as_malformed(self.request.connection):
                # A bad chunk size, answered 400 by the HTTP layer: nothing
                # went upstream, nothing is recorded on the key's agent.
                metrics.child(metrics.MALFORMED, self.provider.name).inc()
                self.release(call)
            else:
                # Gone (or timed out) while still sending its request.
                self.record(UsageStatus.DISCONNECTED, 499, Usage(), error="client left before its request was complete")
        if self.upstream is not None:
            self.upstream.cancel()

    def interrupt(self):
        """Shutdown's grace period is over: cut this call (recorded as interrupted)."""
        self.interrupted = True
        if self.upstream is not None:
            self.upstream.cancel()

    def on_finish(self):
        self.services.open_calls.discard(self)

    def record(self, status, http_status, usage, error=""):
        call = self.call
        if call is not None and not call.recorded and call.exchange.route is not None and call.exchange.route.lifecycle:
            # Binds a created response; a background one is billed when it ends.
            usage = self.services.responses.settle(call, usage)
        super().record(status, http_status, usage, error)


default_handlers = [(r"/proxy/([^/]+)(/.*)?", ProxyHandler)]
