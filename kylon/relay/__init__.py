"""The upstream call: one HTTP request on Tornado's CurlAsyncHTTPClient, its
response handed over as it arrives (headers once, then body chunks), and a
way to stop it at any moment.

Nothing here knows about providers. The caller gives a method, URL, headers and
body, and three callbacks: `on_headers(status, headers)`, `on_chunk(bytes)`,
and the awaited result says how the transfer ended.

The body is bytes, or a BodyStream: a body still arriving from the client,
sent upstream as it comes (see BodyStream).

Stopping: Tornado's curl client has no cancel call. `cancel()` shuts the
transfer's socket down (the upstream sees the connection close at once, even
when it is silent, and libcurl fails the transfer on its next look at the
socket; a connect in progress is aborted too, as Kylon opens the sockets
itself), and an XFERINFOFUNCTION, switched on at that moment, aborts a
transfer that has no socket yet (still resolving the host name).
"""

from .body import BodyStream
from .call import BROKEN, CANCELLED, COMPLETED, TIMEOUT, UNREACHABLE, UpstreamCall
from .client import EPOLL_EVENTS, UpstreamClient, configure_client
from .headers import HOP_BY_HOP, encode_headers, end_to_end_headers, parse_header_lines

__all__ = [
    "BROKEN",
    "CANCELLED",
    "COMPLETED",
    "EPOLL_EVENTS",
    "HOP_BY_HOP",
    "TIMEOUT",
    "UNREACHABLE",
    "BodyStream",
    "UpstreamCall",
    "UpstreamClient",
    "configure_client",
    "encode_headers",
    "end_to_end_headers",
    "parse_header_lines",
]
