"""UpstreamCall: one upstream request, its answer handed over as it arrives,
and cancel() to stop it at any moment (see the package's docstring)."""

import asyncio
import logging
import socket
import time

import pycurl
from tornado.httpclient import AsyncHTTPClient

from .body import BodyStream
from .headers import encode_headers, parse_header_lines

log = logging.getLogger("kylon.relay")

# Ending of a transfer, as the caller sees it.
COMPLETED = "completed"  # the whole response arrived (any HTTP status)
CANCELLED = "cancelled"  # cancel() was called
TIMEOUT = "timeout"  # connect, first-byte or idle time-out
UNREACHABLE = "unreachable"  # could not connect / resolve
BROKEN = "broken"  # connection reset or closed mid-response, malformed response


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
            # The callbacks are the caller's bound methods and the caller holds
            # this call: break the cycle, so reference counting frees it, not the GC.
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
