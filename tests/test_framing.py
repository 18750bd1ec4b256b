"""Requests the HTTP layer refuses for their framing leave no usage record on
the agent whose key they carry (issue 15, point 5): they are counted in
kylon_malformed_requests_total instead. On SQLite and MariaDB."""

import socket
import time

import pytest

from .test_metrics import Scrape, moved

CHAT = b"POST /proxy/openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
FRAMINGS = {
    "CL+TE": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two Content-Lengths": b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n{}\r\n\r\n",
    "TE not chunked": b"Transfer-Encoding: gzip\r\n\r\n{}",
    "bad chunk size": b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "chunk without its CRLF": b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n",
}


def send(kylon, request):
    with socket.create_connection(("127.0.0.1", kylon.port), timeout=5) as s:
        s.sendall(request)
        data = b""
        try:
            while part := s.recv(65536):
                data += part
        except (socket.timeout, ConnectionResetError):
            pass
    return data


@pytest.mark.parametrize("framing", FRAMINGS)
def test_bad_framing_leaves_no_usage_record(kylon, fake_openai, framing):
    agent, key = kylon.agent_with_key("100")
    fake_openai.reset()
    before = Scrape(kylon)
    answer = send(kylon, CHAT + b"Authorization: Bearer " + key.encode() + b"\r\n" + FRAMINGS[framing])
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert fake_openai.received == []
    deadline = time.monotonic() + 5
    while moved(before, Scrape(kylon), "kylon_malformed_requests_total", provider="openai") < 1:
        assert time.monotonic() < deadline, "the refusal was not counted"
        time.sleep(0.05)
    time.sleep(0.3)  # past the usage writer's flush period (0.05 s)
    assert kylon.admin("GET", "/usage", params={"agent_id": agent["id"]}).json()["data"] == []
    assert kylon.balance(agent["id"]) == 100


def test_a_client_leaving_mid_body_is_still_recorded(kylon, fake_openai):
    """Not a framing error: a call cut off while sending its body keeps its record."""
    agent, key = kylon.agent_with_key("100")
    with socket.create_connection(("127.0.0.1", kylon.port), timeout=5) as s:
        s.sendall(CHAT + b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: 100\r\n\r\n{\"mo")
        time.sleep(0.3)
    records = kylon.usage_for_agent(agent["id"], 1)
    assert records[0]["status"] == "disconnected" and records[0]["http_status"] == 499
