"""A fake upstream runs a Tornado application on its own thread and IOLoop,
records every request it receives, and notes when a client connection closes.
Tests talk to it from plain synchronous code."""

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field

import tornado.httpserver
import tornado.web


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict
    body: bytes
    closed_at: float | None = None
    finished_at: float | None = None
    arrived_at: float = field(default_factory=time.monotonic)

    def assert_only_operator_credential(self, header, value):
        """The operator's credential reached the upstream, and no Kylon key did."""
        assert self.headers.get(header) == value
        assert "pak_" not in self.everything()

    def everything(self):
        """Headers, path, query and body as one text, to look for leaked keys."""
        head = "\n".join(f"{k}: {v}" for k, v in self.headers.items())
        return f"{self.method} {self.path}?{self.query}\n{head}\n\n" + self.body.decode("latin1")


def merged(base, extra):
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class RecordingHandler(tornado.web.RequestHandler):
    """Base of the fakes' handlers: records the request, and when the client
    went away."""

    def initialize(self, fake):
        self.fake = fake
        self.received = None

    def prepare(self):
        self.received = Received(
            self.request.method,
            self.request.path,
            self.request.query,
            {k.lower(): v for k, v in self.request.headers.get_all()},
            self.request.body,
        )
        self.fake.received.append(self.received)

    def on_connection_close(self):
        if self.received is not None and self.received.closed_at is None:
            self.received.closed_at = time.monotonic()

    def on_finish(self):
        if self.received is not None:
            self.received.finished_at = time.monotonic()

    def check_xsrf_cookie(self):
        pass

    def client_gone(self):
        return self.received.closed_at is not None

    def with_test_fields(self, value, header="x-fake-usage"):
        """`value` with the JSON object of the test's `header` merged in (nested
        objects key by key): how a test makes the fake report usage fields the
        real API sends only for some calls (audio tokens, 1-hour cache writes,
        web searches, a service tier)."""
        extra = self.request.headers.get(header)
        return merged(value, json.loads(extra)) if extra else value

    async def sleep_unless_closed(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.client_gone():
            await asyncio.sleep(0.01)


class FakeServer:
    def __init__(self, handlers):
        self.received = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._handlers = [(pattern, cls, {"fake": self}) for pattern, cls in handlers]
        self._ready = threading.Event()
        self.loop = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self._ready.wait(10)

    def _run(self):
        async def main():
            self.loop = asyncio.get_running_loop()
            app = tornado.web.Application(self._handlers)
            server = tornado.httpserver.HTTPServer(app)
            server.listen(self.port, "127.0.0.1")
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
            server.stop()

        asyncio.run(main())

    def stop(self):
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
            self.thread.join(5)

    def kylon_env(self):
        """Environment variables that make Kylon use this fake (override)."""
        return {}

    def secrets(self):
        """Credentials this fake expects: they must never reach a client or a log."""
        return set()

    def reset(self):
        self.received.clear()

    def last(self):
        return self.received[-1]

    def wait_closed(self, received, timeout=5.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if received.closed_at is not None:
                return received.closed_at
            time.sleep(0.01)
        return None
