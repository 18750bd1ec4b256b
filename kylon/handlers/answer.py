"""The answer of a proxied call, relayed to the client as it arrives: the
upstream's status and headers, then its bytes (as the meter lets them
through), each loop turn's in one send. A mixin of ProxyHandler."""

import asyncio
import time

from .. import metrics
from ..calls.headers import copy_response_headers


class AnswerRelay:
    def shape_response_headers(self, status, headers):
        """Hook: change the upstream's headers before anything reads them."""

    def upstream_headers_arrived(self, status, headers):
        self.call.first_byte_at, self.call.upstream_status = time.monotonic(), status
        exchange = self.exchange
        self.shape_response_headers(status, headers)
        exchange.response_headers = headers
        if self.meter is not None:
            self.meter.on_headers(status, headers)
        usage = self.provider.usage_from_headers(exchange, headers)
        if usage is not None:
            exchange.usage = usage
        if self.client_gone:
            return
        self.set_status(status, self.upstream.reason or None)
        # Only Kylon's defaults are set so far: the upstream's content type wins.
        self._headers.pop("Content-Type", None)
        copy_response_headers(self._headers, headers, self.provider.drop_response_headers)
        self.set_header("x-kylon-request-id", self.request_id)
        self.set_header("X-Accel-Buffering", "no")
        if self.rate is not None:
            # Kylon's own limits on the key and agent, in place of the operator account's.
            for name, value in self.services.ratelimits.headers(self.rate.pairs).items():
                self._headers[name] = value
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
            if self.streaming and not self.call.answered and (self.exchange.usage_final or self.exchange.stream_done):
                self.services.writer.answered(self.call)  # an SDK may stop reading here: journaled first
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

    def deliver(self, answer, tail):
        """The rest of the answer, as the outcome says (see outcome.Outcome)."""
        if answer is None or self._finished:
            return
        if answer == "end" or answer == "complete":
            if tail and answer == "complete":
                self.write(tail)
            self.finish()
        else:
            self.send_kylon_error(*answer)
