"""The access log: Kylon's log layout, secrets redacted, the logger's level
obeyed, and the lines of one IOLoop turn written together."""

import asyncio
import io
import logging
import re

import pytest

from kylon.accesslog import AccessLog


class Request:
    def __init__(self, uri, method="POST"):
        self.uri = uri
        self.method = method
        self.remote_ip = "203.0.113.9"

    def request_time(self):
        return 0.0123


class Handler:
    def __init__(self, status, uri, request_id="req_1"):
        self.status = status
        self.request = Request(uri)
        self.request_id = request_id

    def get_status(self):
        return self.status


class CountingStream(io.StringIO):
    writes = 0

    def write(self, text):
        self.writes += 1
        return super().write(text)


LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) tornado\.access: (.*)\n")


@pytest.mark.gen_test
async def test_lines_of_one_turn_go_out_in_one_write():
    stream = CountingStream()
    logger = logging.getLogger("tornado.access")
    level = logger.level
    logger.setLevel(logging.INFO)
    log = AccessLog(stream)
    log(Handler(200, "/proxy/openai/v1/chat/completions"))
    log(Handler(429, "/proxy/gemini/v1beta/models/x:generateContent?key=pak_secret&alt=sse", "req_2"))
    log(Handler(502, "/proxy/openai/v1/responses", "req_3"))
    assert stream.getvalue() == ""  # not before the loop's turn
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    logger.setLevel(level)
    lines = stream.getvalue().splitlines(keepends=True)
    assert stream.writes == 1 and len(lines) == 3
    parsed = [LINE.fullmatch(line).groups() for line in lines]
    assert parsed[0] == ("INFO", "200 POST /proxy/openai/v1/chat/completions 203.0.113.9 12.3ms req_1")
    assert parsed[1] == ("WARNING", "429 POST /proxy/gemini/v1beta/models/x:generateContent?key=[redacted]&alt=sse "
                                    "203.0.113.9 12.3ms req_2")
    assert parsed[2][0] == "ERROR"
    assert "pak_secret" not in stream.getvalue()


@pytest.mark.gen_test
async def test_the_loggers_level_is_obeyed():
    stream = io.StringIO()
    logger = logging.getLogger("kylon.test.access")
    logger.setLevel(logging.WARNING)
    log = AccessLog(stream, logger)
    log(Handler(200, "/healthz"))
    log(Handler(404, "/nope"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [line.split(": ", 1)[1] for line in stream.getvalue().splitlines()] == [
        "404 POST /nope 203.0.113.9 12.3ms req_1"
    ]
