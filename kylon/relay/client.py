"""Kylon's upstream HTTP client: Tornado's CurlAsyncHTTPClient with a lean
path for UpstreamCalls and libcurl's sockets in an epoll set of their own."""

import collections
import select

import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpclient import AsyncHTTPClient
from tornado.ioloop import IOLoop


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
    queue are Tornado's; the per-call work, most of what the client costs, is
    Kylon's: an UpstreamCall sets its own few curl options
    (`UpstreamCall.setup`) instead of HTTPRequest → _RequestProxy → ~35, gets
    its body bytes synchronously from libcurl (it only queues them for the
    client's socket, and never re-enters this client from there), and its end
    is reported as (error number, message), with no HTTPResponse. Calls made
    with `fetch()` still take Tornado's own path.
    """

    def initialize(self, *args, **kwargs):
        # Before Tornado's set-up, whose first handle already calls _set_timeout.
        self._loop = IOLoop.current().asyncio_loop
        self._calls = collections.deque()  # UpstreamCalls waiting for a free handle
        self._running = {}  # curl handle -> its UpstreamCall
        # libcurl's sockets in an epoll set of their own, one descriptor for the
        # loop: Tornado re-registers each socket with the loop at every change.
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
