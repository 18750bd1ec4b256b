"""The access log: one line per request, written in batches.

Tornado calls `AccessLog` (its `log_function`) as each request ends. A line
made through the logging module is costly (a LogRecord, the caller's frame
looked up, a formatter, a lock, one write and flush per line). Here the line
is formatted directly in the layout of Kylon's other log lines (LOG_FORMAT)
and kept until the IOLoop has handled what is ready now: then every line of
that turn goes out in one write. Nothing waits on a timer, so a line is out within the same loop turn.
The logger's level still decides, per status class, whether a line is made.
"""

import asyncio
import logging
import re
import sys
import time

import tornado.log

# The layout of every log line (app.py's logging.basicConfig uses it too).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Query parameters whose values never reach a log line: keys can arrive in a
# query string (Gemini's ?key=), so can the upload session tokens Kylon hands
# out (?upload_id=, ElevenLabs' ?conversation_signature=). app.py passes the providers' own names
# (kylon.providers.secret_query_params); this default is today's set of them.
DEFAULT_SECRET_PARAMS = ("key", "api_key", "access_token", "token", "upload_id", "conversation_signature")


def secret_query(names):
    """A pattern matching `name=value` in a query string for each of `names`."""
    alternatives = "|".join(re.escape(name) for name in names)
    return re.compile(rf"((?:^|[?&])(?:{alternatives})=)[^&]*", re.IGNORECASE)


class AccessLog:
    def __init__(self, stream=None, logger=None, secret_params=DEFAULT_SECRET_PARAMS):
        self.stream = stream
        self.logger = logger or tornado.log.access_log
        self.secret_query = secret_query(secret_params)
        self.lines = []
        self.second = None
        self.stamp = ""

    def __call__(self, handler):
        status = handler.get_status()
        level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
        if not self.logger.isEnabledFor(level):
            return
        request = handler.request
        now = time.time()
        second = int(now)
        if second != self.second:
            # The same clock and layout as logging's asctime: local time, then ,milliseconds.
            self.second = second
            self.stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        line = "%s,%03d %s %s: %d %s %s %s %.1fms %s\n" % (
            self.stamp,
            int((now - second) * 1000),
            logging.getLevelName(level),
            self.logger.name,
            status,
            request.method,
            self.redact(request.uri),
            request.remote_ip,
            1000.0 * request.request_time(),
            getattr(handler, "request_id", "-"),
        )
        if not self.lines:
            asyncio.get_running_loop().call_soon(self.flush)
        self.lines.append(line)

    def redact(self, uri):
        return self.secret_query.sub(r"\1[redacted]", uri) if "?" in uri else uri

    def flush(self):
        if self.lines:
            lines, self.lines = self.lines, []
            stream = self.stream or sys.stderr
            try:
                stream.write("".join(lines))
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stderr loses log lines, never a call
