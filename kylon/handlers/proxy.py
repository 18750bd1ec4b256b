"""One handler for every provider route under /proxy/<provider>/…

The order of a call: find the provider and route → authenticate the Kylon key
(401) → provider configured (503) → gate (403) → credits (402) → body size
(413) → read and check the body (400) → forward with the operator's
credential → relay the answer as it arrives while the meter reads usage →
bill → hand the usage record to the batching writer. Every call that got past
authentication leaves exactly one usage record, whatever happens after.
"""

import asyncio
import json
import logging
import re
import time
import urllib.parse

import tornado.web

from .. import metrics, relay
from ..auth import KEY_PREFIX
from ..billing import Usage, credits_for
from ..meter import ResponseMeter, settle_usage
from ..models import utcnow
from ..providers import Exchange
from .base import BaseHandler

log = logging.getLogger("kylon.proxy")

# Client headers that never go upstream, whatever the provider: every place a
# Kylon key can travel, cookies, compression (Kylon reads the answer to bill
# it, so it asks for it plain), and the client's addresses.
NEVER_FORWARD = frozenset(
    "authorization x-api-key x-goog-api-key xi-api-key cookie accept-encoding "
    "forwarded x-forwarded-for x-forwarded-host x-forwarded-proto x-real-ip".split()
)


# A path under /proxy/<provider> may only name the provider's own API: no dot
# segments, no encoded slashes, dots or backslashes, no empty segments (which
# could make "//host" an authority). Checked on the raw path; the upstream URL
# is always base URL + this path, so nothing else can pick the host.
_UNSAFE_PATH = re.compile(r"(^|/)\.\.?(/|$)|%2e|%2f|%5c|\\|//|%00|%0d|%0a", re.IGNORECASE)


def safe_path(path):
    return not _UNSAFE_PATH.search(path)


OUT_OF_CREDITS = (
    "Out of credits: this agent's balance, less what its running calls hold, is not positive."
)

# A raw body (an upload: multipart form, file bytes) larger than this goes
# upstream as it arrives rather than held whole (relay.BodyStream). The
# provider sees this first part only (prepare_request): enough for the text
# fields of a multipart form, which clients send before the files. JSON bodies
# are always read whole.
STREAM_BODY_AFTER = 256 * 1024

def without_kylon_keys(query):
    """The query string less any parameter carrying a Kylon key (`?key=pak_…`,
    or one under any other name): a Kylon key never goes upstream."""
    if KEY_PREFIX not in urllib.parse.unquote(query):
        return query
    kept = [
        part for part in query.split("&") if KEY_PREFIX not in urllib.parse.unquote_plus(part)
    ]
    return "&".join(kept)


def status_class(status):
    return f"{status // 100}xx" if status else "none"


@tornado.web.stream_request_body
class ProxyHandler(BaseHandler):
    def initialize(self):
        self.provider = None
        self.route = None
        self.key = None
        self.agent = None
        self.exchange = None
        self.call = None
        self.client_gone = False
        self.recorded = False
        self.body_chunks = []
        self.body_size = 0
        self.upload = None  # relay.BodyStream once the body streams upstream
        self.forwarding = None  # the call, when it started before the body ended
        self.started_at = utcnow()
        self.t0 = time.monotonic()
        self.first_byte_at = None
        self.headers_sent = False
        self.streaming = False
        self.meter = None
        self.interrupted = False
        self.held = 0
        self.body_read = False
        self.flush_scheduled = False

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
        self.provider = provider
        self.error_body = provider.error_body
        route, allowed = provider.match(path, self.request.method)
        try:
            key_entry, agent = await self.authenticate()
        except Exception as e:
            # Only a key not seen before needs the database; known keys keep working.
            log.warning("key lookup failed: %s", e)
            return self.send_kylon_error(503, "Kylon cannot check this key right now (database unavailable).")
        if key_entry is None:
            # Repeated bad keys from one address are answered ever more slowly.
            delay = services.bad_keys.record_failure(self.request.remote_ip)
            if delay:
                await asyncio.sleep(delay)
            return self.reject_unauthenticated(agent)
        self.key, self.agent = key_entry, agent
        self.route = route
        self.exchange = Exchange(
            request_id=self.request_id,
            route=route,
            path=path,
            query=without_kylon_keys(provider.upstream_query(self.request.query)),
        )
        services.open_calls.add(self)
        if not safe_path(path):
            return self.reject(400, "Invalid path: it must stay within the provider's API.", reason="path")
        if route is None and not allowed:
            return self.reject(404, f"No such {provider.name} route: {path or '/'}.")
        if not allowed:
            return self.reject(405, f"Method {self.request.method} is not allowed on {path}.")
        if not provider.configured:
            return self.reject(503, provider.missing_configuration(), reason="not_configured")
        skill = services.cache.gates.required_skill(provider.name, path)
        if skill and skill not in agent.skills:
            return self.reject(
                403, f"This agent lacks the skill '{skill}', which {provider.name} requires.", reason="gate"
            )
        if agent.available <= 0:
            return self.reject(402, OUT_OF_CREDITS, reason="credits")
        declared = self.request.headers.get("Content-Length")
        limit = services.settings.max_body_bytes
        if declared is not None:
            try:
                too_large = int(declared) > limit
            except ValueError:
                return self.reject(400, "Invalid Content-Length header.")
            if too_large:
                return self.reject(413, f"Request body larger than {limit} bytes.", reason="too_large")
        # Kylon's own check (data_received) answers 413; Tornado's guard, set
        # higher, only catches a single chunk far beyond the limit (with a 400).
        self.request.connection.set_max_body_size(2 * limit)

    async def authenticate(self):
        """(KeyEntry, AgentEntry) for the call's Kylon key, or (None, reason).
        A subclass may accept a call that stands on something Kylon issued to
        a key instead (Gemini's resumable upload sessions)."""
        return await self.services.cache.lookup(self.provider.client_key(self.request))

    def reject_unauthenticated(self, reason):
        metrics.child(metrics.REJECTED, self.provider.name, "key").inc()
        detail = {"revoked": "has been revoked", "expired": "has expired"}.get(reason)
        if detail:
            message = f"This Kylon API key {detail}."
        elif self.provider.client_key(self.request):
            message = "Invalid Kylon API key."
        else:
            message = "Missing Kylon API key."
        self.send_kylon_error(401, message)

    def reject(self, status, message, reason="bad_request"):
        """Refuse an authenticated call before it goes upstream; it is recorded."""
        metrics.child(metrics.REJECTED, self.provider.name, reason).inc()
        self.send_kylon_error(status, message)
        self.record("rejected", status, Usage(), error=message)

    def data_received(self, chunk):
        if self._finished:
            return
        self.body_size += len(chunk)
        if self.body_size > self.services.settings.max_body_bytes:
            if self.call is not None:
                self.call.cancel()
            self.reject(413, "Request body too large.", reason="too_large")
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
        route = self.route
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
                self.record("error", 500, settle_usage(self.exchange, finished=False), error="internal error")
        finally:
            if self.upload is not None:
                # Refused before going upstream, or done: the rest of the body is dropped.
                self.upload.close()

    post = put = patch = delete = head = options = get

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
        route = self.route
        if route is not None and route.body == "json":
            try:
                request_json = json.loads(body)
            except (ValueError, UnicodeDecodeError, RecursionError) as e:
                return self.reject(400, f"The request body is not valid JSON: {str(e)[:200]}")
            if not isinstance(request_json, dict):
                return self.reject(400, "The request body must be a JSON object.")
            exchange.request_json = request_json
            problem = provider.body_problem(request_json)
            if problem:
                return self.reject(400, problem)
            exchange.model = request_json.get("model") or ""
            exchange.stream = request_json.get("stream") is True
            if route.rewrite is not None and route.rewrite(exchange, request_json):
                body = json.dumps(request_json, ensure_ascii=False).encode("utf-8")
        refusal = await provider.ready(exchange)
        if refusal is not None:
            return self.reject(refusal[0], refusal[1], reason="provider")
        body = provider.prepare_request(exchange, body)
        # Hold the call's likely maximum cost while it runs (released in record()).
        price = self.services.pricebook.price(provider.name, exchange.price_model or exchange.model)[0]
        hold = credits_for(provider.hold_usage(exchange), price)
        if not self.services.cache.try_hold(self.agent, hold):
            return self.reject(402, OUT_OF_CREDITS, reason="credits")
        self.held = hold
        if self.upload is not None:
            # What the provider saw goes first; the rest follows as it arrives.
            self.upload.put_first(body)
            body = self.upload
        headers = self.upstream_headers()
        self.meter = ResponseMeter(exchange) if route is not None else None
        method = self.request.method
        outcome = await self.call_upstream(
            method,
            provider.upstream_url(exchange),
            headers,
            body if (body or method in ("POST", "PUT", "PATCH")) else None,
            self.upstream_headers_arrived,
            self.upstream_chunk,
        )
        self.finish_call(outcome)

    async def call_upstream(self, method, url, headers, body, on_headers, on_chunk):
        """One upstream call with Kylon's time-outs, kept in self.call so that a
        client leaving or a shutdown can cancel it; returns its outcome."""
        settings = self.services.settings
        self.call = relay.UpstreamCall(
            method,
            url,
            headers,
            body,
            on_headers=on_headers,
            on_chunk=on_chunk,
            connect_timeout=settings.connect_timeout,
            first_byte_timeout=settings.first_byte_timeout,
            idle_timeout=settings.idle_timeout,
        )
        if self.client_gone or self.interrupted:
            self.call.cancel()
        return await self.call.run()

    def upstream_headers(self):
        """The (name, value) pairs sent upstream: the client's end-to-end
        headers (already checked by the HTTP server) less what never goes
        upstream, then the provider's defaults and its credential."""
        provider = self.provider
        drop = NEVER_FORWARD.union(provider.client_key_headers, provider.drop_request_headers)
        credential = provider.auth_headers()
        replaced = {name.lower() for name in credential}
        pairs = [
            (name, value)
            for name, value in relay.end_to_end_headers(self.request.headers, drop)
            # A Kylon key in any other header stays here too.
            if KEY_PREFIX not in value and name.lower() not in replaced
        ]
        if provider.default_request_headers:
            present = {name.lower() for name, _ in pairs}
            for name, value in provider.default_request_headers.items():
                if name.lower() not in present:
                    pairs.append((name, value))
        pairs.extend(credential.items())
        return pairs

    def upstream_headers_arrived(self, status, headers):
        self.first_byte_at = time.monotonic()
        self.exchange.response_headers = headers
        if self.meter is not None:
            self.meter.on_headers(status, headers)
        usage = self.provider.usage_from_headers(self.exchange, headers)
        if usage is not None:
            self.exchange.usage = usage
        if self.client_gone:
            return
        self.set_status(status, self.call.reason or None)
        # Only Kylon's defaults are set so far: the upstream's content type wins.
        self._headers.pop("Content-Type", None)
        drop = set(self.provider.drop_response_headers)
        seen = set()
        out = self._headers
        for name, value in relay.end_to_end_headers(headers, drop):
            if name.lower() in ("date", "server"):
                continue
            # Names and values were checked as the upstream's headers were
            # parsed (HTTPHeaders.add): set_header() would check them again.
            if name in seen:
                out.add(name, value)
            else:
                out[name] = value
                seen.add(name)
        self.set_header("x-kylon-request-id", self.request_id)
        self.set_header("X-Accel-Buffering", "no")
        self.streaming = "text/event-stream" in (headers.get("Content-Type") or "")
        if self.streaming:
            metrics.child(metrics.ACTIVE_STREAMS, self.provider.name).inc()
        if self.meter is not None and self.meter.json_body:
            # A plain JSON answer is kept whole anyway (to read its usage): it
            # goes out in one send at the end, headers and body together, and
            # a failure before then can still be answered with a clean 502.
            return
        self.headers_sent = True
        # Sent in parts as it arrives: each part goes out at once (Nagle is
        # off on client connections, see server.py). The headers go at the end
        # of this loop turn, with the first chunks when they came with them.
        self.schedule_flush()

    def upstream_chunk(self, chunk):
        out = self.meter.feed(chunk) if self.meter is not None else chunk
        if out and not self.client_gone:
            self.write(out)
            if self.headers_sent:
                self.schedule_flush()

    def schedule_flush(self):
        # What arrives together leaves together: one send per loop turn, not
        # one per chunk (nor one for the headers and one for the first chunk).
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush_written)

    def flush_written(self):
        self.flush_scheduled = False
        if not self._finished and not self.client_gone:
            self.flush()

    def finish_call(self, outcome):
        exchange = self.exchange
        call = self.call
        status = call.status or 0
        tail = self.meter.close() if self.meter is not None else b""
        if self.streaming:
            metrics.child(metrics.ACTIVE_STREAMS, self.provider.name).dec()
        label = (self.provider.name, self.route_name)
        if self.interrupted and not self.client_gone:
            usage = settle_usage(exchange, finished=outcome == relay.COMPLETED)
            if self.headers_sent:
                self.finish()
            else:
                self.send_kylon_error(503, "Kylon is shutting down.")
            self.record("interrupted", status or 503, usage, error="shutdown")
            return
        if (self.client_gone or outcome == relay.CANCELLED) and self.whole_stream_sent(status):
            # The client had the whole answer: it closed after the last events,
            # before the upstream's closing bytes reached Kylon (an SDK stops
            # reading at [DONE] / message_stop). The call is complete.
            self.record("completed", status, settle_usage(exchange, finished=True))
            return
        if (self.client_gone or outcome == relay.CANCELLED) and exchange.stream_error and 200 <= status < 300:
            # The answer carried an error and the client left on it (an SDK
            # raises at an error chunk): an upstream error, not a disconnect.
            self.record_stream_error(label)
            return
        if self.client_gone or outcome == relay.CANCELLED:
            metrics.child(metrics.CLIENT_DISCONNECTS, *label).inc()
            usage = settle_usage(exchange, finished=outcome == relay.COMPLETED)
            self.record("disconnected", status or 499, usage)
            return
        if outcome == relay.COMPLETED:
            if tail:
                self.write(tail)
            # Recorded (and journaled) before the answer's last bytes go out.
            if status >= 400:
                kind = "http_4xx" if status < 500 else "http_5xx"
                metrics.child(metrics.UPSTREAM_ERRORS, *label, kind).inc()
                self.record("upstream_error", status, Usage(), error=f"upstream answered {status}")
            elif exchange.stream_error:
                self.record_stream_error(label)
            else:
                self.record("completed", status, settle_usage(exchange, finished=True))
            self.finish()
            return
        metrics.child(metrics.UPSTREAM_ERRORS, *label, outcome).inc()
        error = call.error or outcome
        if not self.headers_sent:
            code = 504 if outcome == relay.TIMEOUT else 502
            message = {
                relay.TIMEOUT: "The upstream did not answer in time.",
                relay.UNREACHABLE: "The upstream could not be reached.",
            }.get(outcome, "The upstream connection failed.")
            self.send_kylon_error(code, message)
            self.record("error", code, settle_usage(exchange, finished=False), error=error)
        else:
            # Mid-answer failure: the status line is gone; end the body so the
            # client sees a truncated answer rather than a hang.
            self.finish()
            self.record("error", status, settle_usage(exchange, finished=False), error=error)

    def record_stream_error(self, label):
        """The answer began well and then carried an error: what was consumed
        is billed, the call counts as an upstream error."""
        metrics.child(metrics.UPSTREAM_ERRORS, *label, "in_stream").inc()
        self.record("upstream_error", self.call.status, settle_usage(self.exchange, finished=True),
                    error=self.exchange.stream_error)

    def whole_stream_sent(self, status):
        """A 2xx event stream whose final usage (each provider's last or next
        to last event) or end marker has gone to the client, with no error in it."""
        exchange = self.exchange
        return (
            200 <= status < 300
            and self.meter is not None
            and self.meter.scanner is not None
            and (exchange.usage_final or exchange.stream_done)
            and not exchange.stream_error
        )

    @property
    def route_name(self):
        return self.route.name if self.route is not None else "passthrough"

    # -- bookkeeping ---------------------------------------------------------
    def upstream_request_id(self):
        headers = self.exchange.response_headers if self.exchange is not None else None
        if headers is None:
            return ""
        for name in self.provider.upstream_id_headers:
            if name in headers:
                return headers[name][:100]
        return ""

    def on_connection_close(self):
        self.client_gone = True
        if self.call is None and not self.body_read and self.exchange is not None:
            # Gone (or timed out) while still sending its request.
            self.record("disconnected", 499, Usage(), error="client left before its request was complete")
        if self.call is not None:
            self.call.cancel()

    def interrupt(self):
        """Shutdown's grace period is over: cut this call (recorded as interrupted)."""
        self.interrupted = True
        if self.call is not None:
            self.call.cancel()

    def on_finish(self):
        self.services.open_calls.discard(self)

    def record(self, status, http_status, usage, error=""):
        """The call's one usage record, priced and handed to the batch writer."""
        if self.recorded or self.agent is None:
            return
        self.recorded = True
        self.services.open_calls.discard(self)
        if self.held:
            self.services.cache.release(self.agent, self.held)
            self.held = 0
        services = self.services
        provider = self.provider
        exchange = self.exchange
        model = exchange.model if exchange is not None else ""
        priced_as = (exchange.price_model if exchange is not None else "") or model
        price, fallback = services.pricebook.price(provider.name, priced_as)
        credits = credits_for(usage, price)
        now = time.monotonic()
        ttfb = None if self.first_byte_at is None else self.first_byte_at - self.t0
        route = self.route_name
        metrics.child(metrics.REQUESTS, provider.name, route, status_class(http_status)).inc()
        metrics.child(metrics.REQUEST_DURATION, provider.name, route).observe(now - self.t0)
        if ttfb is not None:
            metrics.child(metrics.TIME_TO_FIRST_BYTE, provider.name, route).observe(ttfb)
        model_label = model if services.pricebook.known_model(provider.name, model) else "other"
        for kind in ("input", "cached_input", "cache_write", "output", "reasoning"):
            count = getattr(usage, kind + "_tokens")
            if count:
                metrics.child(metrics.TOKENS, provider.name, model_label, kind).inc(count)
        if usage.units:
            metrics.child(metrics.UNITS, provider.name, model_label, usage.unit).inc(float(usage.units))
        if credits:
            metrics.child(metrics.CREDITS, provider.name, model_label).inc(float(credits))
        services.writer.add(
            {
                "request_id": self.request_id,
                "agent_id": self.agent.agent_id,
                "key_id": self.key.key_id,
                "provider": provider.name,
                "route": route if self.route is not None else (exchange.path if exchange else "")[:200],
                "model": (model or "")[:200],
                "stream": bool(exchange and exchange.stream),
                "status": status,
                "http_status": http_status,
                "input_tokens": usage.input_tokens,
                "cached_input_tokens": usage.cached_input_tokens,
                "cache_write_tokens": usage.cache_write_tokens,
                "output_tokens": usage.output_tokens,
                "reasoning_tokens": usage.reasoning_tokens,
                "unit": usage.unit,
                "units": usage.units,
                "credits": credits,
                "estimated": usage.estimated,
                "fallback_price": fallback and not usage.empty and usage.reported_cost is None,
                "error": (error or "")[:500],
                "upstream_request_id": self.upstream_request_id(),
                "started_at": self.started_at,
                "duration_ms": int((now - self.t0) * 1000),
                "ttfb_ms": None if ttfb is None else int(ttfb * 1000),
            }
        )


default_handlers = [(r"/proxy/([^/]+)(/.*)?", ProxyHandler)]
