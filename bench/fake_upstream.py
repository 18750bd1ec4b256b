"""A fast fake OpenAI chat-completions upstream for the benchmark.

A bare asyncio protocol (no framework) speaking HTTP/1.1 with keep-alive, so
the fake costs little next to what is measured. It answers
POST …/chat/completions in OpenAI's wire format: a chat.completion JSON with
usage, or (`"stream": true`) a data-only SSE stream of chat.completion.chunk
events, each in its own HTTP chunk, `"usage": null` on every chunk and a final
usage chunk when `stream_options.include_usage` asks for it, then `[DONE]`.

The model name picks the stream's shape, so any proxy in front passes it on:
  bench-c<N>-i<MS>   N content chunks, MS milliseconds apart (0: as fast as the
                     connection takes them)
  bench-hold-<ID>    one content chunk, then silence until the client goes away
  bench-tick-<ID>    a content chunk every 100 ms until the client goes away
  anything else      6 chunks, no delay
For the hold/tick streams the fake notes when their connection closed:
GET /_closed/<ID> → {"closed_at": <time.monotonic() or null>} (the monotonic
clock is system-wide, so the benchmark can compare it with its own).
GET /_stats?prefix=<P> → {"open_streams": …, "connections": …, "open_watched":
hold/tick streams open whose ID starts with P}.

Run: python bench/fake_upstream.py --port 9100
"""

import argparse
import asyncio
import json
import re
import signal
import time

COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1735689600,
    "model": "bench",
    "system_fingerprint": "fp_bench",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello from the fake upstream!", "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {
        "prompt_tokens": 19,
        "completion_tokens": 8,
        "total_tokens": 27,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    },
    "service_tier": "default",
}
COMPLETION_BODY = json.dumps(COMPLETION, separators=(",", ":")).encode()

# Content chunks cycle through these words: proxies that check for a model
# repeating itself (LiteLLM does) must not see the same chunk twice in a row.
WORDS = [" The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", "."]
_SHAPE = re.compile(r"bench-c(\d+)-i(\d+)$")
_WATCHED = re.compile(r"bench-(hold|tick)-([A-Za-z0-9_.-]+)$")
TICK_SECONDS = 0.1
MAX_HOLD_SECONDS = 600

# Streams and watched connections, for /_stats and /_closed.
open_streams = 0
connections = 0
closed_at = {}
open_watched = set()


def http_chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse_chunk(model, delta, include_usage, finish=None):
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1735689600,
        "model": model,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if include_usage:
        chunk["usage"] = None
    return http_chunk(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")


def usage_chunk(model):
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1735689600,
        "model": model,
        "system_fingerprint": "fp_bench",
        "choices": [],
        "usage": {**COMPLETION["usage"], "completion_tokens": 1, "total_tokens": 20},
    }
    return http_chunk(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")


def response_head(status, content_type, length=None, extra=b""):
    reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}.get(status, b"OK")
    head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n" % (status, reason, content_type)
    if length is None:
        head += b"Transfer-Encoding: chunked\r\n"
    else:
        head += b"Content-Length: %d\r\n" % length
    return head + b"x-request-id: req_bench\r\n" + extra + b"\r\n"


class Connection(asyncio.Protocol):
    """One client connection; requests are answered one after the other."""

    def __init__(self):
        self.transport = None
        self.buffer = b""
        self.busy = False  # a streamed answer is being written
        self.closed = None  # future: set when the connection goes away
        self.can_write = None
        self.watch_id = None

    def connection_made(self, transport):
        global connections
        connections += 1
        self.transport = transport
        loop = asyncio.get_running_loop()
        self.closed = loop.create_future()
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_lost(self, exc):
        global connections
        connections -= 1
        if self.watch_id is not None:
            closed_at[self.watch_id] = time.monotonic()
            open_watched.discard(self.watch_id)
        if not self.closed.done():
            self.closed.set_result(None)
        self.can_write.set()

    def pause_writing(self):
        self.can_write.clear()

    def resume_writing(self):
        self.can_write.set()

    def data_received(self, data):
        self.buffer += data
        if not self.busy:
            self.handle_buffered()

    def handle_buffered(self):
        while not self.busy:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin1")
            lines = head.split("\r\n")
            try:
                method, target, _ = lines[0].split(" ", 2)
            except ValueError:
                self.transport.close()
                return
            length = 0
            keep_alive = True
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip())
                elif name == "connection" and value.strip().lower() == "close":
                    keep_alive = False
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    # Not used by any client of the benchmark.
                    self.transport.close()
                    return
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.answer(method, target, body, keep_alive)

    def send_json(self, status, payload, keep_alive=True):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.transport.write(response_head(status, b"application/json", len(body)) + body)
        if not keep_alive:
            self.transport.close()

    def answer(self, method, target, body, keep_alive):
        path = target.split("?", 1)[0]
        if method == "GET":
            if path.startswith("/_closed/"):
                return self.send_json(200, {"closed_at": closed_at.get(path[len("/_closed/") :])}, keep_alive)
            if path == "/_stats":
                prefix = target.partition("?prefix=")[2]
                watched = sum(1 for w in open_watched if w.startswith(prefix)) if prefix else len(open_watched)
                stats = {"open_streams": open_streams, "connections": connections, "open_watched": watched}
                return self.send_json(200, stats, keep_alive)
            return self.send_json(200, {"ok": True}, keep_alive)
        if not path.endswith("/chat/completions"):
            return self.send_json(404, {"error": {"message": "no such route", "type": "invalid_request_error"}})
        if b'"stream"' not in body:
            return self.send_json(200, COMPLETION_BODY, keep_alive)
        try:
            request = json.loads(body)
        except ValueError:
            return self.send_json(400, {"error": {"message": "bad JSON", "type": "invalid_request_error"}})
        if request.get("stream") is not True:
            return self.send_json(200, COMPLETION_BODY, keep_alive)
        self.busy = True
        asyncio.get_running_loop().create_task(self.stream(request, keep_alive))

    async def stream(self, request, keep_alive):
        global open_streams
        open_streams += 1
        try:
            await self.write_stream(request)
        finally:
            open_streams -= 1
        if self.transport.is_closing():
            return
        if not keep_alive:
            self.transport.close()
            return
        self.busy = False
        self.handle_buffered()

    async def write_stream(self, request):
        model = str(request.get("model", ""))
        include_usage = (request.get("stream_options") or {}).get("include_usage") is True
        count, interval, mode = 6, 0.0, None
        shape = _SHAPE.search(model)
        watched = _WATCHED.search(model)
        if shape:
            count, interval = int(shape.group(1)), int(shape.group(2)) / 1000
        elif watched:
            mode, self.watch_id = watched.group(1), watched.group(2)
            open_watched.add(self.watch_id)
        write = self.transport.write
        write(response_head(200, b"text/event-stream; charset=utf-8", extra=b"openai-processing-ms: 1\r\n"))
        write(sse_chunk(model, {"role": "assistant", "content": ""}, include_usage))
        contents = [sse_chunk(model, {"content": word}, include_usage) for word in WORDS]
        if mode is not None:
            write(contents[0])
            sent = 1
            deadline = time.monotonic() + MAX_HOLD_SECONDS
            while not self.closed.done() and time.monotonic() < deadline:
                if mode == "hold":
                    await asyncio.wait([self.closed], timeout=deadline - time.monotonic())
                else:
                    await asyncio.wait([self.closed], timeout=TICK_SECONDS)
                    if not self.closed.done():
                        write(contents[sent % len(contents)])
                        sent += 1
            if self.closed.done():
                return
        else:
            for i in range(count):
                if self.closed.done():
                    return
                write(contents[i % len(contents)])
                if interval:
                    await asyncio.sleep(interval)
                elif not self.can_write.is_set():
                    await self.can_write.wait()  # the reader is behind (set again on close)
                elif i % 32 == 31:
                    await asyncio.sleep(0)  # let other streams have their turn
        if self.closed.done():
            return
        write(sse_chunk(model, {}, include_usage, finish="stop"))
        if include_usage:
            write(usage_chunk(model))
        write(http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


async def serve(host, port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Connection, host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake upstream on http://{host}:{port}", flush=True)
    await stop.wait()
    server.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
