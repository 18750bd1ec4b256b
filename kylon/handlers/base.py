"""The handler every Kylon handler derives from: request id, JSON errors in the
route's provider shape, and the services (database worker, caches) of the app."""

import json
import logging
import secrets
import time

import tornado
import tornado.web
from tornado import httputil

from ..errors import openai_error_body

log = logging.getLogger("kylon.web")


def new_request_id():
    """`req_` + 24 hex digits: the microsecond clock (13) then 44 random bits.
    Ids made one after the other sort one after the other, so each new usage
    record lands at the end of the request-id index instead of on a random
    page of it: with random ids, the pages a batch dirties (and SQLite writes
    to its WAL) grow with the table."""
    return "req_%013x%011x" % (time.time_ns() // 1000, secrets.randbits(44))


_date = [0, ""]


def http_date():
    """The Date header's value, formatted once a second (Tornado formats it
    anew, through email.utils, for every answer)."""
    now = int(time.time())
    if now != _date[0]:
        _date[:] = [now, httputil.format_timestamp(now)]
    return _date[1]


SERVER_HEADER = "TornadoServer/%s" % tornado.version


class BaseHandler(tornado.web.RequestHandler):
    def clear(self):
        # As Tornado's own clear(), with the cached Date.
        self._headers = httputil.HTTPHeaders(
            {"Server": SERVER_HEADER, "Content-Type": "text/html; charset=UTF-8", "Date": http_date()}
        )
        self.set_default_headers()
        self._write_buffer = []
        self._status_code = 200
        self._reason = "OK"

    def set_default_headers(self):
        # clear() (send_error) calls this again: keep one id per request.
        if not hasattr(self, "request_id"):
            self.request_id = new_request_id()
        self.set_header("x-kylon-request-id", self.request_id)
        self.set_header("Content-Type", "application/json")

    @property
    def services(self):
        return self.application.settings["kylon"]

    def check_xsrf_cookie(self):
        # Proxy and API calls authenticate with a header, never a cookie, so a
        # cross-site form cannot forge them. The admin pages check XSRF again.
        pass

    def compute_etag(self):
        return None

    def write_json(self, value, status=200):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value, default=str))

    def error_body(self, status, message, code=None):
        """Kylon's own error body: OpenAI's shape. The proxy sets this per call
        to the provider's `error_body`, in the shape its SDK expects."""
        return openai_error_body(status, message, code)

    def send_kylon_error(self, status, message, code=None, headers=None):
        """Finish with one of Kylon's own errors, in the route's provider shape."""
        if self._finished:
            return
        self.clear()
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        for name, value in {**self.error_headers(), **(headers or {})}.items():
            self.set_header(name, value)
        self.finish(json.dumps(self.error_body(status, message, code)))

    async def throttled_check(self, throttle, is_right, message):
        """One credential check under a FailureThrottle, per client address
        (`remote_ip`: with xheaders on, the address the trusted proxy names).
        True when right; False when wrong, after the throttle's delay (the
        caller answers); None when refused at once: the 429 is sent here."""
        address = self.request.remote_ip or ""
        right = await throttle.check(address, is_right)
        if right is None:
            self.send_kylon_error(429, message, headers={"Retry-After": str(throttle.retry_after(address))})
        return right

    def error_headers(self):
        """Headers of Kylon's own errors on this handler, besides the usual ones."""
        return {}

    def write_error(self, status_code, **kwargs):
        message = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code >= 500:
            message = "Internal error in Kylon (request id %s)" % self.request_id
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(self.error_body(status_code, message)))


class NotFoundHandler(BaseHandler):
    def prepare(self):
        self.send_kylon_error(404, "No such route: %s" % self.request.path)
