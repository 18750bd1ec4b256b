"""The relay on its own (pytest-tornado): chunks as they arrive, and cancel()
closing a silent upstream's connection at once."""

import asyncio
import os
import time

import pytest
import tornado.web
from tornado.httpclient import AsyncHTTPClient

from kylon import relay

relay.configure_client(50)
state = {}


class Silent(tornado.web.RequestHandler):
    async def get(self):
        self.set_header("Content-Type", "text/event-stream")
        self.write("data: first\n\n")
        await self.flush()
        state["closed"] = asyncio.Event()
        await state["closed"].wait()

    def on_connection_close(self):
        state["closed_at"] = time.monotonic()
        if "closed" in state:
            state["closed"].set()


class Fine(tornado.web.RequestHandler):
    def get(self):
        self.set_header("X-Upstream", "yes")
        self.set_header("Connection", "x-secret-hop")
        self.set_header("x-secret-hop", "1")
        self.finish({"ok": True})


@pytest.fixture
def app():
    return tornado.web.Application([(r"/silent", Silent), (r"/fine", Fine)])


@pytest.mark.gen_test(timeout=10)
async def test_cancel_closes_a_silent_upstream_at_once(http_server, http_port):
    chunks = []
    call = relay.UpstreamCall("GET", f"http://127.0.0.1:{http_port}/silent", {}, None,
                              on_headers=lambda s, h: None, on_chunk=chunks.append)
    task = asyncio.ensure_future(call.run())
    while not chunks:
        await asyncio.sleep(0.01)
    assert chunks == [b"data: first\n\n"]
    cancelled_at = time.monotonic()
    call.cancel()
    assert await task == relay.CANCELLED
    while "closed_at" not in state and time.monotonic() - cancelled_at < 3:
        await asyncio.sleep(0.01)
    assert state["closed_at"] - cancelled_at < 0.5


@pytest.mark.gen_test(timeout=10)
async def test_headers_before_body_and_hop_by_hop_filtered(http_server, http_port):
    seen = []
    call = relay.UpstreamCall("GET", f"http://127.0.0.1:{http_port}/fine", {}, None,
                              on_headers=lambda s, h: seen.append(
                                  ("headers", s, {n.lower(): v for n, v in relay.end_to_end_headers(h)})),
                              on_chunk=lambda c: seen.append(("chunk", c)))
    assert await call.run() == relay.COMPLETED
    kind, status, headers = seen[0]
    assert kind == "headers" and status == 200
    assert headers["x-upstream"] == "yes"
    assert "x-secret-hop" not in headers and "connection" not in headers
    assert b"".join(c for k, c in seen[1:]) == b'{"ok": true}'


@pytest.mark.gen_test(timeout=10)
async def test_unreachable_and_first_byte_timeout(http_server, http_port):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    call = relay.UpstreamCall("GET", f"http://127.0.0.1:{port}/", {}, None, lambda s, h: None, lambda c: None)
    assert await call.run() == relay.UNREACHABLE
    state.pop("closed_at", None)
    call = relay.UpstreamCall("GET", f"http://127.0.0.1:{http_port}/silent", {}, None, lambda s, h: None,
                              lambda c: None, first_byte_timeout=0.2)
    # The silent handler sends its headers and a chunk: not a first-byte time-out.
    task = asyncio.ensure_future(call.run())
    await asyncio.sleep(0.5)
    assert not task.done()
    call.cancel()
    assert await task == relay.CANCELLED


@pytest.mark.gen_test(timeout=10)
async def test_cancel_while_still_connecting():
    """No socket to shut down yet: the progress callback ends the transfer."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    # Fill the accept queue so that a further connect hangs in the handshake.
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(listener.getsockname())
        fillers.append(s)
    try:
        call = relay.UpstreamCall("GET", "http://127.0.0.1:%d/" % listener.getsockname()[1], {}, None,
                                  lambda s, h: None, lambda c: None, connect_timeout=30)
        task = asyncio.ensure_future(call.run())
        await asyncio.sleep(0.3)
        assert not task.done()
        cancelled_at = time.monotonic()
        call.cancel()
        assert await task == relay.CANCELLED
        assert time.monotonic() - cancelled_at < 1.5
    finally:
        for s in fillers:
            s.close()
        listener.close()


@pytest.mark.gen_test(timeout=10)
async def test_curl_sockets_are_watched_while_in_use_and_then_forgotten(http_server, http_port):
    client = AsyncHTTPClient()
    calls = [relay.UpstreamCall("GET", f"http://127.0.0.1:{http_port}/fine", {}, None,
                                lambda s, h: None, lambda c: None) for _ in range(20)]
    assert await asyncio.gather(*(call.run() for call in calls)) == [relay.COMPLETED] * 20
    # Every socket libcurl asked about it has also said it was done with.
    assert client._watched == {}


@pytest.mark.gen_test(timeout=10)
async def test_a_socket_number_reused_unannounced_is_watched_again():
    """The kernel drops a closed socket from the epoll set by itself: when
    libcurl reuses its number before Kylon heard of the close, the new socket
    is registered anew, and one still registered is updated."""
    import select
    import socket

    import pycurl

    client = AsyncHTTPClient()
    first, peer = socket.socketpair()
    number = first.fileno()
    client._handle_socket(pycurl.POLL_IN, number, None, None)
    first.close()  # never announced with POLL_REMOVE
    second, peer2 = socket.socketpair()
    if second.fileno() != number:
        # The new socket under the old number, as libcurl's next socket would get it.
        moved = socket.socket(fileno=os.dup2(second.fileno(), number))
        second.close()
        second = moved
    try:
        assert second.fileno() == number
        client._handle_socket(pycurl.POLL_OUT, number, None, None)
        assert client._watched[number] == select.EPOLLOUT
        assert (number, select.EPOLLOUT) in client._epoll.poll(0)  # writable, and watched
        client._handle_socket(pycurl.POLL_REMOVE, number, None, None)
        assert number not in client._watched and client._epoll.poll(0) == []
    finally:
        for s in (peer, second, peer2):
            s.close()


def test_header_lines_are_parsed_as_a_block_and_bad_fields_dropped():
    valid = relay.parse_header_lines(
        [b"Content-Type: text/event-stream\r\n", b"Set-Cookie: a=1\r\n", b"set-cookie: b=2\r\n",
         b"X-Latin: caf\xe9 \t\r\n", b"X-Lf-Only: yes\n", b"X-Empty:\r\n"]
    )
    assert list(valid.get_all()) == [
        ("Content-Type", "text/event-stream"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
        ("X-Latin", "caf\xe9"), ("X-Lf-Only", "yes"), ("X-Empty", ""),
    ]
    # One bad line: each line is then checked on its own, and only the bad ones go.
    mixed = relay.parse_header_lines(
        [b"Good: 1\r\n", b"Bad Name: 2\r\n", b"Control: a\x01b\r\n", b"Bare: a\rb\r\n", b"no colon\r\n",
         b"Also: ok\r\n"]
    )
    assert list(mixed.get_all()) == [("Good", "1"), ("Also", "ok")]
    assert list(relay.parse_header_lines([]).get_all()) == []


@pytest.mark.gen_test(timeout=10)
async def test_a_finished_call_lets_its_caller_go_without_the_cyclic_gc(http_server, http_port):
    """The caller holds the call and the call holds the caller's bound
    methods: once the call is over, that cycle is broken, so a finished
    request is freed by reference counting (no GC pause for it later)."""
    import gc
    import weakref

    class Caller:
        def __init__(self):
            self.chunks = []
            self.call = relay.UpstreamCall("GET", f"http://127.0.0.1:{http_port}/fine", {}, None,
                                           self.on_headers, self.on_chunk)

        def on_headers(self, status, headers):
            self.status = status

        def on_chunk(self, chunk):
            self.chunks.append(chunk)

    caller = Caller()
    assert await caller.call.run() == relay.COMPLETED
    assert caller.status == 200 and b"".join(caller.chunks) == b'{"ok": true}'
    gone = weakref.ref(caller)
    gc.disable()
    try:
        del caller
        assert gone() is None
    finally:
        gc.enable()
