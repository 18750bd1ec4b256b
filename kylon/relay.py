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

import asyncio
import collections
import logging
import re
import select
import socket
import time

import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpclient import AsyncHTTPClient
from tornado.concurrent import Future
from tornado.httputil import HTTPHeaders
from tornado.ioloop import IOLoop

log = logging.getLogger("kylon.relay")

# Hop-by-hop headers (RFC 9110 §7.6.1) and those the HTTP stack sets itself.
HOP_BY_HOP = frozenset(
    "connection keep-alive proxy-authenticate proxy-authorization proxy-connection te trailer "
    "transfer-encoding upgrade host content-length expect".split()
)

# Ending of a transfer, as the caller sees it.
COMPLETED = "completed"  # the whole response arrived (any HTTP status)
CANCELLED = "cancelled"  # cancel() was called
TIMEOUT = "timeout"  # connect, first-byte or idle time-out
UNREACHABLE = "unreachable"  # could not connect / resolve
BROKEN = "broken"  # connection reset or closed mid-response, malformed response


def configure_client(max_connections):
    AsyncHTTPClient.configure(
        UpstreamClient,
        max_clients=max_connections,
        # Bodies are streamed through and never held whole; this limit only
        # applies to the streaming buffer's total, so keep it out of the way.
        max_body_size=1 << 62,
    )


class UpstreamClient(CurlAsyncHTTPClient):
    """Tornado's curl client with a lean path for Kylon's own calls.

    The multi handle, its socket and timer plumbing, the handle pool and the
    queue are Tornado's. What changes is the per-call work, which at a few
    thousand calls a second is most of what the client costs: an UpstreamCall
    sets its own handful of curl options (`UpstreamCall.setup`) instead of
    Tornado's HTTPRequest → _RequestProxy → ~35 options, gets its body bytes
    synchronously from libcurl (it only queues them for the client's socket,
    and never re-enters this client from there), and its end is reported as
    (error number, message) with no HTTPResponse built around it. Calls made
    with `fetch()` still take Tornado's own path.
    """

    def initialize(self, *args, **kwargs):
        # Before Tornado's set-up, whose first handle already calls _set_timeout.
        self._loop = IOLoop.current().asyncio_loop
        self._calls = collections.deque()  # UpstreamCalls waiting for a free handle
        self._running = {}  # curl handle -> its UpstreamCall
        # libcurl's sockets are watched in an epoll set of their own, which the
        # event loop watches as one descriptor. Tornado registers each socket
        # with the loop and removes it again at every change of interest; a
        # keep-alive connection is added and removed once per call, and on
        # uvloop each add costs four system calls (a pollability probe, a
        # non-blocking ioctl, the registration) against one here.
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._watched = {}  # fd -> epoll event mask
        super().initialize(*args, **kwargs)
        if self._epoll is not None:
            self._loop.add_reader(self._epoll.fileno(), self._sockets_ready)

    def close(self):
        if self._epoll is not None:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
        super().close()

    def _handle_socket(self, event, fd, multi, data):
        """libcurl's socket callback: what it wants to know about a socket."""
        if self._epoll is None:
            return super()._handle_socket(event, fd, multi, data)
        if event == pycurl.POLL_REMOVE:
            if self._watched.pop(fd, None) is not None:
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    pass  # already closed: the kernel dropped it from the set
            return
        mask = EPOLL_EVENTS[event]
        known = self._watched.get(fd)
        if known == mask:
            return
        try:
            if known is None:
                self._epoll.register(fd, mask)
            else:
                self._epoll.modify(fd, mask)
        except FileExistsError:  # a number reused before its removal was heard of
            self._epoll.modify(fd, mask)
        except FileNotFoundError:  # closed and reopened under the same number
            self._epoll.register(fd, mask)
        self._watched[fd] = mask

    def _sockets_ready(self):
        """The epoll set is readable: tell libcurl about each ready socket."""
        socket_action = self._multi.socket_action
        for fd, events in self._epoll.poll(0):
            action = 0
            if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                action |= pycurl.CSELECT_IN
            if events & (select.EPOLLOUT | select.EPOLLERR):
                action |= pycurl.CSELECT_OUT
            if events & select.EPOLLERR:
                action |= pycurl.CSELECT_ERR
            while True:
                try:
                    ret = socket_action(fd, action)[0]
                except pycurl.error as e:
                    ret = e.args[0]
                if ret != pycurl.E_CALL_MULTI_PERFORM:
                    break
        self._finish_pending_requests()

    def start(self, call):
        self._calls.append(call)
        self._process_queue()

    def _process_queue(self):
        while self._calls and self._free_list:
            call = self._calls.popleft()
            curl = self._free_list.pop()
            try:
                call.setup(curl)
            except Exception as e:
                curl.reset()
                self._free_list.append(curl)
                call.ended(pycurl.E_FAILED_INIT, f"could not set up the upstream call: {e}")
            else:
                self._running[curl] = call
                self._multi.add_handle(curl)
        if self._requests:
            super()._process_queue()

    def _finish(self, curl, curl_error=None, curl_message=None):
        call = self._running.pop(curl, None)
        if call is None:
            return super()._finish(curl, curl_error, curl_message)
        self._multi.remove_handle(curl)
        curl.reset()
        self._free_list.append(curl)
        call.ended(curl_error, curl_message)

    def _set_timeout(self, msecs):
        """libcurl's timer callback, straight on the asyncio loop; -1 means
        no timer is needed (Tornado's own version fires one at once then)."""
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        if msecs >= 0:
            self._timeout = self._loop.call_later(msecs / 1000.0, self._handle_timeout)


EPOLL_EVENTS = {
    pycurl.POLL_NONE: 0,
    pycurl.POLL_IN: getattr(select, "EPOLLIN", 0),
    pycurl.POLL_OUT: getattr(select, "EPOLLOUT", 0),
    pycurl.POLL_INOUT: getattr(select, "EPOLLIN", 0) | getattr(select, "EPOLLOUT", 0),
}


def encode_headers(headers):
    """Header lines for libcurl's HTTPHEADER, from HTTPHeaders, a dict or
    (name, value) pairs. Empty `Expect:` and `Pragma:` lines keep libcurl from
    adding its own (a 100-continue wait on larger bodies; no-cache). A CR or LF
    in a line is refused, not sent."""
    if isinstance(headers, HTTPHeaders):
        items = headers.get_all()
    elif isinstance(headers, dict):
        items = headers.items()
    else:
        items = headers  # (name, value) pairs
    lines = []
    seen = set()
    for name, value in items:
        seen.add(name.lower())
        lines.append(f"{name}: {value}".encode("latin1"))
    if "expect" not in seen:
        lines.append(b"Expect:")
    if "pragma" not in seen:
        lines.append(b"Pragma:")
    joined = b"".join(lines)
    if b"\r" in joined or b"\n" in joined:
        raise ValueError("illegal characters in a header (CR or LF)")
    return lines


# A header block whose every line is a valid field (RFC 9110: a token, a
# colon, then visible characters, spaces and tabs), checked in one match
# rather than with HTTPHeaders.add's two per line. Characters are latin-1.
_FIELD_LINES = re.compile(r"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r?\n)*")


def parse_header_lines(lines):
    """HTTPHeaders from raw header lines (bytes, each ending in CRLF); a line
    that is not a valid field is dropped."""
    headers = HTTPHeaders()
    block = b"".join(lines).decode("latin1")
    fields = block.split("\n")[:-1]
    if _FIELD_LINES.fullmatch(block):
        seen = set()
        for line in fields:
            name, _, value = line.partition(":")
            value = value.strip(" \t\r")
            key = name.lower()
            if key in seen:
                headers.add(name, value)
            else:
                seen.add(key)
                headers[name] = value  # checked above: no second check
        return headers
    for line in fields:
        name, colon, value = line.partition(":")
        if colon:
            try:
                headers.add(name, value.strip(" \t\r"))
            except Exception:
                pass
    return headers


def end_to_end_headers(headers, drop=()):
    """The (name, value) pairs of `headers` less hop-by-hop ones, those the
    Connection header names, and any in `drop` (lower-case names)."""
    named = set()
    for value in headers.get_list("Connection"):
        named.update(v.strip().lower() for v in value.split(","))
    pairs = []
    for name, value in headers.get_all():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named or lower in drop:
            continue
        pairs.append((name, value))
    return pairs


class BodyStream:
    """A request body sent upstream while it is still arriving from the client.

    Tornado's curl client sends only a body held whole in memory (it ignores
    `body_producer`). This one goes to libcurl through a READFUNCTION instead:
    libcurl reads the chunks fed in as it can send them, and when none is
    waiting the read pauses the upload (READFUNC_PAUSE) until the next feed()
    or end() unpauses it. feed() returns a Future while more than HIGH_WATER
    bytes wait, so that the client's upload is read no faster than the
    upstream takes it (Tornado waits on what data_received returns).
    A stream cannot be rewound: libcurl is told so (no redirects are followed).
    """

    HIGH_WATER = 1 << 20

    def __init__(self, length=None):
        self.length = length  # the declared size; None: sent chunked
        self._chunks = collections.deque()
        self._waiting = 0  # bytes fed and not read yet
        self._ended = False
        self._closed = False  # the transfer is over or aborted: nothing more is sent
        self._curl = None
        self._paused = False
        self._drained = None
        # Called once libcurl has read the whole body (the upstream's turn to answer).
        self.on_sent = None

    def attach(self, curl, method):
        """The body options of a transfer, from UpstreamCall.setup: a POST,
        or an upload under the call's own method."""
        self._curl = curl
        curl.setopt(pycurl.READFUNCTION, self._read)
        curl.setopt(pycurl.SEEKFUNCTION, lambda offset, origin: pycurl.SEEKFUNC_CANTSEEK)
        size = -1 if self.length is None else self.length
        if method == "POST":
            curl.setopt(pycurl.POST, 1)
            curl.setopt(pycurl.POSTFIELDSIZE_LARGE, size)
        else:
            curl.setopt(pycurl.UPLOAD, 1)
            curl.setopt(pycurl.INFILESIZE_LARGE, size)

    def _read(self, size):
        if self._closed:
            return pycurl.READFUNC_ABORT
        if not self._chunks:
            if self._ended:
                if self.on_sent is not None:
                    self.on_sent()
                    self.on_sent = None
                return b""
            self._paused = True
            return pycurl.READFUNC_PAUSE
        chunk = self._chunks.popleft()
        if len(chunk) > size:
            self._chunks.appendleft(chunk[size:])
            chunk = chunk[:size]
        self._waiting -= len(chunk)
        if self._waiting <= self.HIGH_WATER:
            self._release()
        return chunk

    def put_first(self, chunk):
        """The start of the body (what the provider saw), before anything fed."""
        self._chunks.appendleft(chunk)
        self._waiting += len(chunk)
        self._resume()

    def feed(self, chunk):
        """Queue a chunk; returns a Future while too much is waiting, else None."""
        if self._closed:
            return None
        self._chunks.append(chunk)
        self._waiting += len(chunk)
        self._resume()
        if self._waiting > self.HIGH_WATER:
            if self._drained is None:
                self._drained = Future()
            return self._drained
        return None

    def end(self):
        """The client's body is complete."""
        self._ended = True
        self._resume()

    def close(self):
        """The transfer is over or cancelled: drop what waits and free the client."""
        self._closed = True
        self.on_sent = None  # the call's own method: no cycle left behind
        self._chunks.clear()
        self._waiting = 0
        self._release()
        self._resume()
        self._curl = None

    def _release(self):
        """Let the client's upload go on."""
        if self._drained is not None:
            if not self._drained.done():
                self._drained.set_result(None)
            self._drained = None

    def _resume(self):
        if self._paused and self._curl is not None:
            self._paused = False
            try:
                # libcurl may call _read from inside this call: the chunk is queued first.
                self._curl.pause(pycurl.PAUSE_CONT)
            except pycurl.error:
                pass


class UpstreamCall:
    """One request to an upstream. Use: `outcome = await UpstreamCall(...).run()`."""

    def __init__(
        self,
        method,
        url,
        headers,
        body,
        on_headers,
        on_chunk,
        connect_timeout=10.0,
        first_byte_timeout=600.0,
        idle_timeout=600.0,
    ):
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.on_headers = on_headers
        self.on_chunk = on_chunk
        self.connect_timeout = connect_timeout
        self.first_byte_timeout = first_byte_timeout
        self.idle_timeout = idle_timeout
        self.status = None
        self.reason = ""
        self.error = ""
        self._header_lines = []  # raw field lines of the current header block
        self._headers_delivered = False
        self._curl = None
        self._socket = None
        self._cancelled = False
        self._timed_out = False
        self._timer = None
        self.first_byte_at = None
        self.bytes_received = 0
        self._done = None  # resolved by ended()

    # -- curl plumbing ----------------------------------------------------
    def setup(self, curl):
        """Set the transfer's options on a fresh (reset) handle; called by
        UpstreamClient when a handle is free."""
        self._curl = curl
        setopt = curl.setopt
        setopt(pycurl.URL, self.url)
        # Only HTTP(S), whatever the URL says; never a redirect (libcurl's default).
        setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        setopt(pycurl.HTTPHEADER, encode_headers(self.headers))
        # Header lines and body chunks come straight from libcurl, in order:
        # the headers parsed before the first body byte is handed on.
        setopt(pycurl.HEADERFUNCTION, self._header_bytes)
        setopt(pycurl.WRITEFUNCTION, self._chunk)
        setopt(pycurl.NOSIGNAL, 1)  # threads exist (the database worker)
        setopt(pycurl.CONNECTTIMEOUT_MS, int(1000 * self.connect_timeout))
        # No whole-transfer limit (it would cut long streams): silence is
        # bounded by the first-byte timer and this idle limit, under 1 byte/s
        # for idle_timeout seconds.
        setopt(pycurl.LOW_SPEED_LIMIT, 1)
        setopt(pycurl.LOW_SPEED_TIME, max(1, int(self.idle_timeout)))
        # Never let a decompressing libcurl change what the client gets.
        setopt(pycurl.HTTP_CONTENT_DECODING, 0)
        # libcurl's default 64 KiB upload buffer per transfer is most of the
        # memory of thousands of open streams; bodies pass through fine in 16.
        setopt(pycurl.UPLOAD_BUFFERSIZE, 16384)
        # The abort callback, switched on only when the call is to end (see
        # _wake): libcurl calls it on every step of a transfer.
        setopt(pycurl.XFERINFOFUNCTION, self._progress)
        setopt(pycurl.OPENSOCKETFUNCTION, self._open_socket)
        method = self.method
        body = self.body
        if method == "HEAD":
            setopt(pycurl.NOBODY, 1)
        elif method != "GET":
            if method != "POST":
                setopt(pycurl.CUSTOMREQUEST, method)
            if isinstance(body, BodyStream):
                body.attach(curl, method)
            elif body is not None:
                setopt(pycurl.POSTFIELDSIZE_LARGE, len(body))
                setopt(pycurl.POSTFIELDS, body)
            elif method == "POST":
                setopt(pycurl.POSTFIELDSIZE_LARGE, 0)
                setopt(pycurl.POSTFIELDS, b"")

    def _header_bytes(self, line):
        """libcurl's HEADERFUNCTION: one raw line of a header block, CRLF
        included. Field lines are kept as they come and parsed together when
        the final block ends."""
        try:
            if line[:5] == b"HTTP/":
                # A new response starts (after a 100 Continue, for example).
                parts = line.decode("latin1").rstrip("\r\n").split(" ", 2)
                try:
                    self.status = int(parts[1])
                except (IndexError, ValueError):
                    self.status = None
                self.reason = parts[2] if len(parts) > 2 else ""
                self._header_lines = []
            elif line != b"\r\n" and line != b"\n":
                self._header_lines.append(line)
            elif self.status is not None and self.status >= 200:
                # End of the final header block.
                self._deliver_headers()
        except Exception:
            log.exception("error handling upstream headers")
            self.cancel()

    def _progress(self, *args):
        return 1 if (self._cancelled or self._timed_out) else 0

    def _deliver_headers(self):
        if self._headers_delivered or self._cancelled:
            return
        self._headers_delivered = True
        if self.first_byte_at is None:
            self.first_byte_at = time.monotonic()
        self._clear_timer()
        self.on_headers(self.status, parse_header_lines(self._header_lines))

    def _chunk(self, chunk):
        """libcurl's WRITEFUNCTION."""
        if self._cancelled:
            return 0  # libcurl stops the transfer
        if not self._headers_delivered:
            self._deliver_headers()
        self.bytes_received += len(chunk)
        try:
            self.on_chunk(chunk)
        except Exception:
            log.exception("error handling an upstream chunk")
            self.cancel()
            return 0
        return None

    def _clear_timer(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _first_byte_expired(self):
        self._timer = None
        if not self._headers_delivered:
            self._timed_out = True
            self._shutdown_socket()
            self._wake()

    def _open_socket(self, purpose, address):
        """libcurl's OPENSOCKETFUNCTION: the socket of a new connection, kept
        so that cancel() can shut it down even while it is still connecting."""
        self._socket = socket.socket(address.family, address.socktype, address.protocol)
        return self._socket

    def _shutdown_socket(self):
        """Shut the transfer's connection down: the upstream sees it closed at
        once, a connect in progress is aborted, libcurl fails the transfer and
        never reuses that connection."""
        curl = self._curl
        if curl is None:
            return
        try:
            fd = curl.getinfo(pycurl.ACTIVESOCKET)
        except pycurl.error:
            fd = -1
        try:
            if fd is not None and fd >= 0:
                # A connection reused from an earlier transfer: fromfd dups
                # the descriptor; shutdown acts on the connection itself.
                s = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)
                try:
                    s.shutdown(socket.SHUT_RDWR)
                finally:
                    s.close()
            elif self._socket is not None:
                self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- public -------------------------------------------------------------
    def cancel(self):
        if self._cancelled:
            return
        self._cancelled = True
        self._clear_timer()
        if isinstance(self.body, BodyStream):
            # A paused upload looks at nothing until unpaused: abort it now.
            self.body.close()
        self._shutdown_socket()
        self._wake()

    def _wake(self):
        """Make libcurl look at the transfer now (unpausing sets a 0 ms timer),
        so the progress callback aborts it even if the socket could not be
        shut down (no connection yet)."""
        if self._curl is not None:
            try:
                self._curl.setopt(pycurl.NOPROGRESS, 0)
                self._curl.pause(pycurl.PAUSE_CONT)
            except pycurl.error:
                pass

    def _start_first_byte_timer(self):
        self._timer = asyncio.get_running_loop().call_later(self.first_byte_timeout, self._first_byte_expired)

    @property
    def cancelled(self):
        return self._cancelled

    def ended(self, errno, message):
        """Called by UpstreamClient when the transfer is over (errno None: it completed)."""
        if errno:
            self.error = f"{message} (curl error {errno})"
        self._clear_timer()
        self._curl = None
        self._socket = None
        if isinstance(self.body, BodyStream):
            self.body.close()
        if self._done is not None and not self._done.done():
            self._done.set_result(errno)

    async def run(self):
        if self._cancelled:
            return CANCELLED
        if isinstance(self.body, BodyStream):
            # The upstream cannot answer before it has the body: the time it
            # has to answer starts once the client's (maybe slow) upload is sent.
            self.body.on_sent = self._start_first_byte_timer
        else:
            self._start_first_byte_timer()
        self._done = asyncio.get_running_loop().create_future()
        # AsyncHTTPClient(), not UpstreamClient(): only the configured base
        # class hands out the one instance with configure_client's max_clients
        # (a subclass called directly is a client of its own with 10 handles).
        AsyncHTTPClient().start(self)
        try:
            return self._outcome(await self._done)
        finally:
            # The callbacks are the caller's bound methods, and the caller
            # holds this call: dropping them breaks the cycle, so a finished
            # request is freed at once by reference counting instead of
            # waiting, with everything it holds, for the cyclic GC (whose
            # passes over thousands of such requests paused the loop 10-20 ms).
            self.on_headers = self.on_chunk = None

    def _outcome(self, errno):
        if self._cancelled:
            return CANCELLED
        if self._timed_out:
            self.error = "upstream sent no response in time"
            return TIMEOUT
        if errno:
            if errno == pycurl.E_OPERATION_TIMEDOUT:
                return TIMEOUT
            if errno in (pycurl.E_COULDNT_CONNECT, pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_RESOLVE_PROXY):
                return UNREACHABLE
            return BROKEN
        if not self._headers_delivered and self.status is not None:
            self._deliver_headers()
        return COMPLETED
