"""Kylon's HTTP server: Tornado's, with the clients' time-outs kept by a sweep.

Tornado enforces `idle_connection_timeout` and `body_timeout` by wrapping every
read of a request's headers and of its body in `gen.with_timeout`: a task, a
chained future and a timer, twice per request. Here each request notes its
stage as its events pass (waiting for headers since…, reading its body
since…, answered), and one sweep, a few times a second, closes a connection
that has waited for a request's headers longer than the idle time-out, or has
been sending a body longer than the body time-out. An answer being sent has no
time-out here (as with Tornado's own): an upstream's silence is the relay's
business.

Nagle's algorithm is off for a connection's whole life (see handle_stream).
"""

import time

from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.ioloop import PeriodicCallback

WAITING, PREPARING, READING_BODY, ANSWERING = range(4)

READ_CHUNK_BYTES = 16 * 1024


class WatchedRequest(httputil.HTTPMessageDelegate):
    """Hands a request's events on to Tornado's delegate, noting its stage."""

    __slots__ = ("delegate", "stage", "since")

    def __init__(self, delegate):
        self.delegate = delegate
        self.stage = WAITING
        self.since = time.monotonic()

    def headers_received(self, start_line, headers):
        # A handler that streams its body first runs prepare() (which may wait:
        # a key lookup, the bad-key slow-down); Tornado reads the body after it.
        self.stage = PREPARING
        ready = self.delegate.headers_received(start_line, headers)
        if ready is None or not hasattr(ready, "add_done_callback"):
            self.reading_body()
        else:
            ready.add_done_callback(self.reading_body)
        return ready

    def reading_body(self, _=None):
        if self.stage == PREPARING:
            self.stage = READING_BODY
            self.since = time.monotonic()

    def data_received(self, chunk):
        return self.delegate.data_received(chunk)

    def finish(self):
        self.stage = ANSWERING
        return self.delegate.finish()

    def on_connection_close(self):
        self.stage = ANSWERING
        return self.delegate.on_connection_close()


def refused_as_malformed(request_conn):
    """Whether Tornado itself ended this request's connection for a malformed
    message (a bad chunk size). It then answers 400 and closes the connection
    (which ends its _finish_future) before it tells the handler; a client
    that went away, or was cut off by the sweep, leaves that future pending."""
    finish = getattr(request_conn, "_finish_future", None)
    return finish is not None and finish.done()


def _nodelay_stays_on(value):
    pass


class KylonHTTPServer(HTTPServer):
    def initialize(self, *args, client_idle_timeout=None, client_body_timeout=None, **kwargs):
        # Each socket read zero-fills a new buffer of this size (Tornado's 64 KiB
        # for a request of a few hundred bytes); also a handler's body chunk size.
        kwargs.setdefault("chunk_size", READ_CHUNK_BYTES)
        super().initialize(*args, **kwargs)
        # Tornado sets a header time-out of an hour when none is given, and
        # wraps every request's header read in with_timeout for it: the sweep
        # below keeps that time-out instead.
        self.conn_params.header_timeout = None
        self.limits = {WAITING: client_idle_timeout, READING_BODY: client_body_timeout}
        self.requests = {}  # connection -> its current WatchedRequest
        shortest = min((t for t in self.limits.values() if t), default=None)
        self.sweeper = None
        if shortest is not None:
            # Connections are cut within a quarter of their time-out (at most 1 s) past it.
            self.sweeper = PeriodicCallback(self.sweep, 1000 * min(max(shortest / 4, 0.05), 1.0))
            self.sweeper.start()

    def handle_stream(self, stream, address):
        # Each answer, or batch of a stream's chunks, is one send that should
        # leave at once: Nagle stays off (Tornado toggles it around every answer).
        stream.set_nodelay(True)
        stream.set_nodelay = _nodelay_stays_on
        super().handle_stream(stream, address)

    def start_request(self, server_conn, request_conn):
        watched = WatchedRequest(super().start_request(server_conn, request_conn))
        self.requests[server_conn] = watched
        return watched

    def on_close(self, server_conn):
        self.requests.pop(server_conn, None)
        super().on_close(server_conn)

    def sweep(self):
        now = time.monotonic()
        limits = self.limits
        for server_conn, watched in list(self.requests.items()):
            limit = limits.get(watched.stage)
            if limit and now - watched.since > limit:
                server_conn.stream.close()
