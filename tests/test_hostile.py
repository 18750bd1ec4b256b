"""Hostile input: each case is answered clearly, nothing reaches another host,
no Kylon key goes upstream or into a log line.

Requests are written on raw sockets where an HTTP client would tidy them up
(dot segments, CRLF, absolute request targets, broken framing)."""

import socket
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kylon.calls.admission import safe_path, without_kylon_keys
from kylon.providers import load_providers
from kylon.providers.base import Exchange

from .fakes.server import FakeServer, RecordingHandler
from .kylon_process import Kylon


class Anything(RecordingHandler):
    def get(self, *args):
        self.finish("canary")

    post = put = delete = patch = get


@pytest.fixture(scope="module")
def canary():
    """A server no input may ever make Kylon contact."""
    server = FakeServer([(r"/.*", Anything)])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hk(tmp_path_factory, upstream_env):
    url = "sqlite:///" + str(tmp_path_factory.mktemp("hostile") / "kylon.db")
    k = Kylon(url, {**upstream_env, "KYLON_MAX_BODY_BYTES": "100000", "KYLON_CLIENT_IDLE_TIMEOUT": "1",
                    "KYLON_CLIENT_BODY_TIMEOUT": "1", "KYLON_BAD_KEY_FREE_FAILURES": "10"}, name="hostile")
    agent, key = k.agent_with_key("100", skills=["elevenlabs"])
    k.key = key
    k.agent = agent
    yield k
    k.stop()


def raw(k, request: bytes, timeout=5.0):
    """Send bytes, return (status or None, response bytes)."""
    with socket.create_connection(("127.0.0.1", k.port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        try:
            while True:
                part = s.recv(65536)
                if not part:
                    break
                data += part
                if b"\r\n\r\n" in data and (b"Content-Length: " in data or b"content-length: " in data):
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    if len(body) >= length:
                        break
        except (socket.timeout, ConnectionResetError):
            pass
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else None
    return status, data


def get(k, target, headers=b""):
    return raw(k, b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
               + headers + b"\r\n")


def everything_received(fakes, canary):
    out = list(canary.received)
    for fake in fakes.values():
        out.extend(fake.received)
    return out


@pytest.fixture
def quiet(fakes, canary):
    """Clears what the fakes received; afterwards nothing may have reached the canary."""
    for fake in fakes.values():
        fake.reset()
    canary.reset()
    yield
    assert canary.received == []


# -- bodies ---------------------------------------------------------------------

BAD_BODIES = {
    "malformed JSON": b"{not json",
    "non-UTF-8": b'{"model": "gpt-4o-mini", "x": "\xff\xfe"}',
    "array": b"[]",
    "string": b'"hello"',
    "empty": b"",
    "model a number": b'{"model": 4, "messages": []}',
    "stream a string": b'{"model": "gpt-4o-mini", "messages": [], "stream": "yes"}',
    "max_tokens a string": b'{"model": "gpt-4o-mini", "messages": [], "max_tokens": "10"}',
    "max_tokens a boolean": b'{"model": "gpt-4o-mini", "messages": [], "max_tokens": true}',
    "nested 20,000 deep": b"[" * 20000 + b"]" * 20000,
}


@pytest.mark.parametrize("case", BAD_BODIES)
def test_bad_json_bodies_get_400_in_openai_shape(hk, fake_openai, quiet, case):
    r = httpx.post(hk.url + "/proxy/openai/v1/chat/completions", content=BAD_BODIES[case],
                   headers={"Authorization": f"Bearer {hk.key}", "Content-Type": "application/json"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert fake_openai.received == []
    assert hk.usage(r.headers["x-kylon-request-id"])["status"] == "rejected"


def test_body_over_the_limit_is_refused_before_it_is_read(hk, fake_openai, quiet):
    """Content-Length says 10 GB; Kylon answers 413 without waiting for the body."""
    started = time.monotonic()
    status, data = raw(hk, b"POST /proxy/openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                       b"Authorization: Bearer " + hk.key.encode() + b"\r\nContent-Length: 10000000000\r\n\r\n{")
    assert status == 413 and time.monotonic() - started < 2
    assert b'"code": "request_too_large"' in data
    assert fake_openai.received == []


def test_chunked_body_over_the_limit_is_413(hk, fake_openai, quiet):
    with socket.create_connection(("127.0.0.1", hk.port), timeout=5) as s:
        s.sendall(b"POST /proxy/openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"Authorization: Bearer " + hk.key.encode() + b"\r\n\r\n")
        try:
            for _ in range(20):
                s.sendall(b"2710\r\n" + b"x" * 10000 + b"\r\n")
        except OSError:
            pass  # Kylon may close the connection once it has answered
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413")
    assert fake_openai.received == []


def test_oversized_headers_are_refused_and_kylon_stays_up(hk, quiet):
    status, _ = get(hk, b"/healthz", b"X-Big: " + b"a" * 200000 + b"\r\n")
    assert status in (None, 400, 431)
    assert httpx.get(hk.url + "/healthz").status_code == 200


def test_very_long_url_is_refused_and_kylon_stays_up(hk, quiet):
    status, _ = get(hk, b"/proxy/gemini/v1beta/" + b"a" * 200000)
    assert status in (None, 400, 414, 431)
    assert httpx.get(hk.url + "/healthz").status_code == 200


def test_slow_client_sending_headers_is_cut_off(hk, quiet):
    with socket.create_connection(("127.0.0.1", hk.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        started = time.monotonic()
        assert s.recv(100) == b""  # the server closed the connection
        assert time.monotonic() - started < 5


def test_slow_client_sending_a_body_is_cut_off_and_recorded(hk, fake_openai, quiet):
    with socket.create_connection(("127.0.0.1", hk.port), timeout=10) as s:
        s.sendall(b"POST /proxy/openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                  b"Authorization: Bearer " + hk.key.encode() + b"\r\n\r\n{\"model\":")
        started = time.monotonic()
        assert s.recv(100) == b""
        assert time.monotonic() - started < 5
    assert fake_openai.received == []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        records = hk.admin("GET", "/usage", params={"agent_id": hk.agent["id"], "status": "disconnected"}).json()
        if any("before its request was complete" in r["error"] for r in records["data"]):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the cut-off call left no usage record")


@pytest.mark.parametrize("framing", [
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
])
def test_ambiguous_body_framing_is_refused(hk, fake_openai, quiet, framing):
    status, _ = raw(hk, b"POST /proxy/openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + framing
                    + b"Authorization: Bearer " + hk.key.encode() + b"\r\n\r\n{}\r\n\r\n")
    assert status in (None, 400)
    assert fake_openai.received == []


# -- paths ----------------------------------------------------------------------

TRAVERSALS = [
    b"/proxy/gemini/v1beta/../../../etc/passwd",
    b"/proxy/gemini/v1beta/models/..",
    b"/proxy/gemini/v1beta/%2e%2e/%2e%2e/x",
    b"/proxy/gemini/v1beta/%2E%2E/x",
    b"/proxy/gemini/v1beta%2fmodels",
    b"/proxy/gemini/v1beta%2Fmodels%2F..",
    b"/proxy/gemini//CANARY/x",
    b"/proxy/gemini/v1beta\\..\\x",
    b"/proxy/gemini/v1beta/%5c..%5cx",
    b"/proxy/gemini/v1beta/models%00.json",
    b"/proxy/elevenlabs/v1/voices%0d%0aHost:%20evil",
    b"/proxy/elevenlabs/../admin/api/agents",
    b"/proxy/elevenlabs/v1/%2e%2e/%2e%2e/",
    b"/proxy/elevenlabs/v1%2fvoices",
    b"/proxy/elevenlabs//CANARY/v1/voices",
    b"/proxy/elevenlabs/./v1/voices",
]


@pytest.mark.parametrize("target", TRAVERSALS, ids=[t.decode() for t in TRAVERSALS])
def test_path_tricks_stay_inside_the_provider(hk, fakes, canary, quiet, target):
    target = target.replace(b"CANARY", f"127.0.0.1:{canary.port}".encode())
    key_header = b"x-goog-api-key: " if b"gemini" in target else b"xi-api-key: "
    status, _ = get(hk, target, key_header + hk.key.encode() + b"\r\n")
    assert status == 400
    assert everything_received(fakes, canary) == []


def test_absolute_request_target_cannot_pick_the_host(hk, fakes, canary, quiet):
    target = f"http://127.0.0.1:{canary.port}/proxy/gemini/v1beta/models".encode()
    status, _ = get(hk, target, b"x-goog-api-key: " + hk.key.encode() + b"\r\n")
    assert status in (400, 404)
    assert everything_received(fakes, canary) == []


def test_raw_crlf_in_the_request_line_is_refused(hk, fakes, quiet):
    status, _ = raw(hk, b"GET /proxy/elevenlabs/v1/voices\r\nHost: evil HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status in (None, 400, 404, 405)
    assert everything_received(fakes, canary=type("none", (), {"received": []})) == []


def test_host_header_does_not_pick_the_upstream(hk, fakes, canary, quiet):
    status, _ = raw(hk, f"GET /proxy/elevenlabs/v1/voices HTTP/1.1\r\nHost: 127.0.0.1:{canary.port}\r\n"
                    f"X-Forwarded-Host: 127.0.0.1:{canary.port}\r\nConnection: close\r\nxi-api-key: {hk.key}\r\n\r\n"
                    .encode())
    assert status == 200
    received = fakes["elevenlabs"].last()
    assert received.headers.get("host", "").endswith(str(fakes["elevenlabs"].port))
    assert "x-forwarded-host" not in received.headers


# -- keys ---------------------------------------------------------------------------


def test_keys_in_query_strings_and_odd_headers_never_go_upstream_or_into_logs(hk, fakes, quiet):
    key = hk.key
    r = httpx.post(hk.url + f"/proxy/openai/v1/chat/completions?key={key}&other=1",
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                   headers={"Authorization": f"Bearer {key}", "X-Extra": f"token {key}"})
    assert r.status_code == 200
    r = httpx.get(hk.url + f"/proxy/gemini/v1beta/models?key={key}&pageSize=5")
    assert r.status_code == 200
    for received in everything_received(fakes, type("none", (), {"received": []})):
        assert key not in received.everything()
    assert "other=1" in fakes["openai"].last().query
    time.sleep(0.2)
    assert key not in hk.read_log()


def test_repeated_bad_keys_from_one_address_are_slowed_down(hk):
    timings = []
    with httpx.Client() as client:
        for i in range(16):
            started = time.monotonic()
            r = client.post(hk.url + "/proxy/openai/v1/chat/completions", json={},
                            headers={"Authorization": f"Bearer pak_wrong{i}"})
            timings.append(time.monotonic() - started)
            assert r.status_code == 401
    assert max(timings[:10]) < 0.5
    assert timings[-1] >= 0.4 and timings[-1] > timings[11]
    # A good key from the same address is not held back.
    started = time.monotonic()
    r = httpx.post(hk.url + "/proxy/openai/v1/chat/completions", headers={"Authorization": f"Bearer {hk.key}"},
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and time.monotonic() - started < 0.5


# -- properties -----------------------------------------------------------------------

PATH_ALPHABET = st.sampled_from(
    ["a", "models", "v1", "v1beta", ".", "..", "/", "//", "%2e", "%2E", "%2f", "%2F", "%5c", "\\", ":", "@",
     "?", "#", ";", "%00", "%0d%0a", "http:", "127.0.0.1", "~", "%25", "+", "files", "upload"]
)
PATHS = st.lists(PATH_ALPHABET, max_size=12).map(lambda parts: "/" + "".join(parts))


@settings(max_examples=2000, deadline=None)
@given(path=PATHS)
def test_property_upstream_url_keeps_the_configured_host(path):
    """Any path that passes the check builds a URL on the provider's own host,
    under the provider's own prefix."""
    providers = load_providers({"GEMINI_API_KEY": "g", "ELEVENLABS_API_KEY": "e", "OPENAI_API_KEY": "o",
                                "KYLON_GEMINI_BASE_URL": "http://127.0.0.1:1111",
                                "KYLON_ELEVENLABS_BASE_URL": "http://127.0.0.1:2222"})
    for name in ("gemini", "elevenlabs"):
        provider = providers[name]
        if not safe_path(path):
            continue
        route, _ = provider.match(path, "GET")
        url = provider.upstream_url(Exchange(request_id="r", route=route, path=path, model="m"))
        split = httpx.URL(url)
        assert (split.scheme, split.host, split.port) == ("http", "127.0.0.1", 1111 if name == "gemini" else 2222)
        assert ".." not in split.path.split("/")


@settings(max_examples=300, deadline=None)
@given(query=st.lists(st.tuples(st.sampled_from(["key", "k", "alt", "x", "api_key"]),
                                st.sampled_from(["pak_secret", "sse", "pak_", "1", "%70ak_x", "a+pak_b"])),
                      max_size=5))
def test_property_no_kylon_key_survives_in_the_query(query):
    raw_query = "&".join(f"{k}={v}" for k, v in query)
    kept = without_kylon_keys(raw_query)
    from urllib.parse import unquote_plus

    assert "pak_" not in unquote_plus(kept)


HEADER_NAMES = st.sampled_from(["X-Api-Key", "Authorization", "X-Goog-Api-Key", "Xi-Api-Key", "X-Custom", "Cookie",
                                "Proxy-Authorization", "X-Forwarded-Host", "Forwarded", "Connection"])


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=PATHS, extra=st.lists(st.tuples(HEADER_NAMES, st.sampled_from(["KEY", "Bearer KEY", "CANARY", "x"])),
                                  max_size=4))
def test_property_end_to_end_no_other_host_and_no_key_upstream(hk, fakes, canary, path, extra):
    for fake in fakes.values():
        fake.reset()
    canary.reset()
    headers = [("xi-api-key", hk.key)]
    for name, value in extra:
        value = value.replace("KEY", hk.key).replace("CANARY", f"127.0.0.1:{canary.port}")
        headers.append((name, value))
    target = ("/proxy/elevenlabs" + path).replace("CANARY", f"127.0.0.1:{canary.port}")
    head = "".join(f"{n}: {v}\r\n" for n, v in headers)
    raw(hk, f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{head}\r\n".encode("latin1"),
        timeout=10)
    assert canary.received == []
    for received in everything_received(fakes, canary):
        assert hk.key not in received.everything()
        assert received.headers.get("xi-api-key") == fakes["elevenlabs"].api_key
