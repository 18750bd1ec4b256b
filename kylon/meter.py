"""Watches an upstream answer go by: reads its usage, and decides which bytes
go on to the client. Shared by every provider; the provider's route supplies
`read_usage` (a whole JSON answer) and `on_event` (one SSE event).

SSE answers are scanned event by event as they arrive (only the unfinished tail
is kept); JSON answers are kept until they end, up to a cap, to read their
usage; anything else (audio) passes through without being kept.
"""

import json
import math
from dataclasses import replace

from .billing import Usage
from .sse import SSEScanner

# A JSON answer larger than this is relayed but not parsed for usage.
JSON_BODY_CAP = 64 * 1024 * 1024


class ResponseMeter:
    __slots__ = ("exchange", "route", "status", "scanner", "filtering", "body", "body_size", "json_body",
                 "reshapes", "answer_json")

    def __init__(self, exchange):
        self.exchange = exchange
        self.route = exchange.route
        self.status = None
        self.scanner = None
        self.filtering = False
        self.body = None
        self.body_size = 0
        self.json_body = False
        # The route answers in a shape of its own (Route.answer): the upstream's
        # JSON is kept from the client, and reshaped at the end.
        self.reshapes = False
        self.answer_json = None

    def on_headers(self, status, headers):
        self.status = status
        content_type = (headers.get("Content-Type") or "").lower()
        route = self.route
        if route is None:
            return
        if "text/event-stream" in content_type and route.on_event is not None:
            self.scanner = SSEScanner()
            # Only a stream whose usage chunk the client did not ask for is filtered.
            self.filtering = self.exchange.hide_usage_chunk
        elif route.answer is not None and status < 400:
            self.json_body = self.reshapes = True
            self.body = []
        elif "json" in content_type and (route.read_usage or route.read_answer) is not None and status < 400:
            self.json_body = True
            self.body = []

    def feed(self, chunk):
        """The bytes of `chunk` that go on to the client."""
        if self.scanner is not None:
            on_event = self.route.on_event
            exchange = self.exchange
            if not self.filtering:
                for event in self.scanner.feed(chunk):
                    on_event(exchange, event)
                return chunk
            kept = [event.raw for event in self.scanner.feed(chunk) if on_event(exchange, event)]
            return b"".join(kept)
        if self.json_body:
            self.body_size += len(chunk)
            if self.body is not None and self.body_size <= JSON_BODY_CAP:
                self.body.append(chunk)
            else:
                # Too large to read: relayed as it is, unless the route reshapes it.
                self.body = None
                self.json_body = self.reshapes
            if self.reshapes:
                return b""
        return chunk

    def close(self):
        """At the end of the answer: the last bytes for the client, if any;
        usage read from a JSON body lands on the exchange."""
        exchange = self.exchange
        if self.scanner is not None:
            tail = [e.raw for e in self.scanner.close() if self.route.on_event(exchange, e)]
            return b"".join(tail) if self.filtering else b""
        if self.json_body and self.body is not None:
            try:
                parsed = json.loads(b"".join(self.body))
            except (ValueError, UnicodeDecodeError):
                parsed = None
            if self.reshapes:
                self.answer_json = parsed if isinstance(parsed, dict) else None
            if self.route.read_answer is not None:
                self.route.read_answer(exchange, parsed)
            if parsed is not None and self.route.read_usage is not None:
                # Any JSON value: the route's reader knows its provider's shapes.
                usage = self.route.read_usage(parsed)
                if usage is not None:
                    exchange.usage = usage
                    exchange.usage_final = True
        return b""


    @property
    def answer_problem(self):
        """Why an answer the route reshapes cannot be ("" when it can)."""
        if self.reshapes and self.answer_json is None:
            return "The upstream answer was not a JSON object."
        return ""

    def reshaped(self, usage, credits):
        """The route's own answer, built from the upstream's JSON and the call's usage."""
        answer = self.route.answer(self.exchange, self.answer_json, usage, credits)
        if answer is None:
            # The route lets this answer go as it came (a listing no allow-list filters).
            return b"".join(self.body)
        return json.dumps(answer, default=str).encode("utf-8")


def settle_usage(exchange, finished):
    """The usage to bill. When the provider gave no figure, or the answer was cut
    before its final figure, Kylon estimates (and says so): see usage_so_far."""
    usage = exchange.usage
    if usage is not None and finished:
        return usage
    return usage_so_far(exchange)


def usage_so_far(exchange):
    """What the call has consumed so far, as a Usage of its own (the
    exchange's is left as it is, the stream may go on): the provider's final
    figures, else an estimate — input from the size of the request (about 4
    bytes a token), output one token per streamed content event."""
    usage = exchange.usage
    if usage is not None and exchange.usage_final:
        return usage
    estimated_input = math.ceil(exchange.request_bytes / 4)
    if usage is None:
        return Usage(input_tokens=estimated_input, output_tokens=exchange.output_events, estimated=True)
    # Partial figures (Anthropic's message_start gives input, not the final output).
    return replace(usage, input_tokens=usage.input_tokens or estimated_input,
                   output_tokens=max(usage.output_tokens, exchange.output_events), estimated=True)
