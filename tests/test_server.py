"""Kylon's HTTP server on its own (pytest-tornado): Nagle stays off on client
connections, across answers of a keep-alive connection; reads go into small
buffers."""

import socket

import pytest
import tornado.web
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.testing import bind_unused_port

from kylon.server import READ_CHUNK_BYTES, KylonHTTPServer


class Plain(tornado.web.RequestHandler):
    def get(self):
        self.finish("ok")


class Streamed(tornado.web.RequestHandler):
    async def get(self):
        for part in ("one ", "two"):
            self.write(part)
            await self.flush()


def server_sockets(server):
    return [conn.stream.socket for conn in server._connections]


@pytest.mark.gen_test(timeout=10)
async def test_nagle_stays_off_on_client_connections():
    sock, port = bind_unused_port()
    server = KylonHTTPServer(tornado.web.Application([(r"/plain", Plain), (r"/streamed", Streamed)]))
    server.add_sockets([sock])
    client = CurlAsyncHTTPClient(force_instance=True, max_clients=1)  # keeps its connection
    try:
        for path in ("/plain", "/streamed", "/plain"):
            response = await client.fetch(f"http://127.0.0.1:{port}{path}")
            assert response.body in (b"ok", b"one two")
            sockets = server_sockets(server)
            # One keep-alive connection, Nagle off after each answer (Tornado
            # alone switches it back on when an answer ends).
            assert len(sockets) == 1
            assert sockets[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        # Each read fills a new buffer of this size (Tornado's default: 64 KiB).
        assert [conn.stream.read_chunk_size for conn in server._connections] == [READ_CHUNK_BYTES]
        assert READ_CHUNK_BYTES <= 16 * 1024
    finally:
        client.close()
        server.stop()
        await server.close_all_connections()
