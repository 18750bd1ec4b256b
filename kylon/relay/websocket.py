"""The upstream side of a WebSocket session, on Tornado's own client
(`websocket_connect`), and the one loop that passes frames on.

Nothing here knows about providers or billing: kylon/handlers/sockets.py
gives the URL and headers, and what to do with each frame.

Back-pressure: a frame is read from one side only once the previous one was
written to the other (`write_message`'s future, which resolves once the
bytes are in the socket): a slow reader holds the sender back through TCP,
and no more than one frame per direction waits in Kylon.
"""

import tornado.httpclient
import tornado.httputil
import tornado.websocket

# Close codes that may not be sent in a close frame (RFC 6455 7.4.1): they
# say that none came.
UNSENDABLE_CODES = (1005, 1006, 1015)
# "Bad Gateway" (IANA's registry): the upstream failed, or refused the session.
BAD_GATEWAY = 1014
# Handshake headers of the client's connection; Tornado makes the upstream's own.
HANDSHAKE_HEADERS = frozenset(("origin",))
HANDSHAKE_PREFIX = "sec-websocket-"


def websocket_url(http_url):
    """ws:// or wss:// for a provider's http:// or https:// base URL."""
    if http_url.startswith("https://"):
        return "wss://" + http_url[len("https://") :]
    if http_url.startswith("http://"):
        return "ws://" + http_url[len("http://") :]
    return http_url


def without_handshake_headers(pairs):
    return [(n, v) for n, v in pairs if n.lower() not in HANDSHAKE_HEADERS and not n.lower().startswith(HANDSHAKE_PREFIX)]


async def connect(url, header_pairs, connect_timeout, max_message_size):
    """An open WebSocketClientConnection to `url`; raises
    tornado.httpclient.HTTPClientError when the upstream answers the
    handshake with an HTTP error, OSError (or a time-out) when it cannot be reached."""
    headers = tornado.httputil.HTTPHeaders()
    for name, value in without_handshake_headers(header_pairs):
        headers.add(name, value)
    request = tornado.httpclient.HTTPRequest(
        url, headers=headers, connect_timeout=connect_timeout, request_timeout=2 * connect_timeout
    )
    return await tornado.websocket.websocket_connect(request, max_message_size=max_message_size)


async def pass_frames(read_message, on_frame, write_message):
    """Frames from `read_message()` to `write_message(message, binary)`, one at
    a time, until the source closes (returns normally) or the sink is closed
    (tornado.websocket.WebSocketClosedError). `on_frame(message)` sees each
    first, and stops the loop by returning False."""
    while True:
        message = await read_message()
        if message is None:
            return
        if on_frame(message) is False:
            return
        await write_message(message, binary=isinstance(message, bytes))


def sendable_code(code):
    """A close code that may be passed on to the other side."""
    if code is None or code in UNSENDABLE_CODES:
        return BAD_GATEWAY
    return code
