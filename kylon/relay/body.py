"""BodyStream: a request body sent upstream while it still arrives."""

import collections

import pycurl
from tornado.concurrent import Future


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
