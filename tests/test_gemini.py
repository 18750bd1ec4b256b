"""Gemini through Kylon with the official google-genai SDK as the client: model
calls (plain, streamed, countTokens), pass-through calls, keys in
`x-goog-api-key` and `?key=`, resumable uploads through Kylon, and paths that
try to leave the provider's API."""

import http.client
import io
import json
import time
from decimal import Decimal
from urllib.parse import urlsplit

import httpx
import pytest
from google import genai
from google.genai import errors as genai_errors

from .fakes import gemini_fake as fake_wire

OPERATOR_KEY = "AIza-operator-gemini-secret"
# gemini-2.5-flash per 1M tokens: input 0.30, cached input 0.03, output 2.50.
# Kylon's input = prompt + tool-use prompt; output = candidates + thoughts.
INPUT = fake_wire.PROMPT_TOKENS + fake_wire.TOOL_USE_PROMPT_TOKENS
OUTPUT = fake_wire.CANDIDATES_TOKENS + fake_wire.THOUGHTS_TOKENS
FLASH_CALL = (
    (INPUT - fake_wire.CACHED_TOKENS) * Decimal("0.30")
    + fake_wire.CACHED_TOKENS * Decimal("0.03")
    + OUTPUT * Decimal("2.50")
) / 1_000_000


@pytest.fixture
def fake_gemini(fakes):
    fake = fakes["gemini"]
    fake.reset()
    return fake


# A genai.Client closes its HTTP client when collected, even while one of its
# calls is running (`client(...).models.generate_content(...)`): keep them.
CLIENTS = []


def client(kylon, key):
    c = genai.Client(api_key=key, http_options={"base_url": kylon.url + "/proxy/gemini"})
    CLIENTS.append(c)
    return c


def assert_clean_upstream(received, key):
    """The operator's key went upstream, and no Kylon key anywhere."""
    received.assert_only_operator_credential("x-goog-api-key", OPERATOR_KEY)
    assert "key=" not in received.query


# -- model calls -------------------------------------------------------------------


def test_generate_content(kylon, fake_gemini, agent_key):
    agent, key = agent_key
    answer = client(kylon, key).models.generate_content(model="gemini-2.5-flash", contents="Say hi")
    assert answer.text == "Hello from the fake Gemini!"
    request_id = answer.sdk_http_response.headers["x-kylon-request-id"]
    received = fake_gemini.last()
    assert received.method == "POST"
    assert urlsplit(received.path).path.endswith("/models/gemini-2.5-flash:generateContent")
    assert_clean_upstream(received, key)

    record = kylon.usage(request_id)
    assert record["provider"] == "gemini" and record["route"] == "generateContent"
    assert record["model"] == "gemini-2.5-flash" and record["stream"] is False
    assert record["status"] == "completed" and record["http_status"] == 200
    assert record["input_tokens"] == INPUT and record["cached_input_tokens"] == fake_wire.CACHED_TOKENS
    assert record["output_tokens"] == OUTPUT and record["reasoning_tokens"] == fake_wire.THOUGHTS_TOKENS
    assert record["estimated"] is False and record["fallback_price"] is False
    assert Decimal(record["credits"]) == FLASH_CALL
    assert kylon.balance(agent["id"]) == Decimal("100") - FLASH_CALL


def test_v1beta_path(kylon, fake_gemini, agent_key):
    agent, key = agent_key
    r = httpx.post(
        kylon.url + "/proxy/gemini/v1beta/models/gemini-2.5-pro:generateContent",
        headers={"x-goog-api-key": key},
        json={"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]},
    )
    assert r.status_code == 200 and r.json()["usageMetadata"]["promptTokenCount"] == fake_wire.PROMPT_TOKENS
    assert fake_gemini.last().path == "/v1beta/models/gemini-2.5-pro:generateContent"
    record = kylon.usage(r.headers["x-kylon-request-id"])
    pro = ((INPUT - fake_wire.CACHED_TOKENS) * Decimal("1.25") + fake_wire.CACHED_TOKENS * Decimal("0.125")
           + OUTPUT * Decimal("10")) / 1_000_000
    assert record["model"] == "gemini-2.5-pro" and Decimal(record["credits"]) == pro


def test_stream(kylon, fake_gemini, agent_key):
    agent, key = agent_key
    chunks = list(client(kylon, key).models.generate_content_stream(model="gemini-2.5-flash", contents="Say hi"))
    assert "".join(c.text for c in chunks) == "Hello from the fake Gemini!"
    assert len(chunks) == len(fake_wire.WORDS)
    request_id = chunks[0].sdk_http_response.headers["x-kylon-request-id"]
    received = fake_gemini.last()
    assert received.path.endswith(":streamGenerateContent") and received.query == "alt=sse"
    assert_clean_upstream(received, key)
    record = kylon.usage(request_id)
    assert record["route"] == "streamGenerateContent" and record["stream"] is True
    assert record["status"] == "completed" and record["estimated"] is False
    assert record["input_tokens"] == INPUT and record["output_tokens"] == OUTPUT
    assert Decimal(record["credits"]) == FLASH_CALL
    assert kylon.balance(agent["id"]) == Decimal("100") - FLASH_CALL


def test_count_tokens_is_free(kylon, fake_gemini, agent_key):
    agent, key = agent_key
    counted = client(kylon, key).models.count_tokens(model="gemini-2.5-flash", contents="Say hi")
    assert counted.total_tokens == fake_wire.COUNT_TOKENS
    assert fake_gemini.last().path.endswith("/models/gemini-2.5-flash:countTokens")
    record = kylon.usage(counted.sdk_http_response.headers["x-kylon-request-id"])
    assert record["route"] == "countTokens" and record["status"] == "completed"
    assert record["model"] == "gemini-2.5-flash" and Decimal(record["credits"]) == 0
    assert record["estimated"] is False
    assert kylon.balance(agent["id"]) == Decimal("100")


def test_disconnect_mid_stream_closes_upstream(kylon, fake_gemini, agent_key):
    """The upstream sends one chunk, then nothing for 30 s; the client leaves."""
    agent, key = agent_key
    url = kylon.url + "/proxy/gemini/v1beta/models/silent-stream:streamGenerateContent?alt=sse"
    with httpx.Client(timeout=10) as http:
        with http.stream("POST", url, headers={"x-goog-api-key": key},
                         json={"contents": [{"parts": [{"text": "Hi"}]}]}) as r:
            assert r.status_code == 200 and r.headers["x-accel-buffering"] == "no"
            request_id = r.headers["x-kylon-request-id"]
            first = next(r.iter_raw())
            assert first.startswith(b"data: ")
            received = fake_gemini.last()
            left_at = time.monotonic()
    closed_at = fake_gemini.wait_closed(received, timeout=5)
    assert closed_at is not None, "the upstream connection was never closed"
    assert closed_at - left_at < 1.5
    record = kylon.usage(request_id)
    assert record["status"] == "disconnected" and record["estimated"] is True
    assert record["model"] == "silent-stream" and record["stream"] is True
    # The first chunk's usageMetadata gave the prompt; one chunk of output was seen.
    assert record["input_tokens"] == fake_wire.PROMPT_TOKENS and record["output_tokens"] == 1
    assert record["fallback_price"] is True
    # The dearest current Gemini (gemini-4-argon from 2026-12-01): 4 input, 20 output.
    expected = (fake_wire.PROMPT_TOKENS * Decimal("4") + 1 * Decimal("20")) / 1_000_000
    assert Decimal(record["credits"]) == expected
    assert kylon.balance(agent["id"]) == Decimal("100") - expected


def test_upstream_error_reaches_the_sdk(kylon, fake_gemini, agent_key):
    agent, key = agent_key
    with pytest.raises(genai_errors.ClientError) as err:
        client(kylon, key).models.generate_content(model="error-429", contents="Hi")
    assert err.value.code == 429 and err.value.status == "RESOURCE_EXHAUSTED"
    record = kylon.usage_for_agent(agent["id"], 1)[0]
    assert record["status"] == "upstream_error" and record["http_status"] == 429
    assert Decimal(record["credits"]) == 0


# -- keys ---------------------------------------------------------------------------


def test_key_in_query_is_accepted_and_never_sent_upstream(kylon, fake_gemini, agent_key):
    agent, key = agent_key
    url = kylon.url + f"/proxy/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?key={key}&alt=sse"
    r = httpx.post(url, json={"contents": [{"parts": [{"text": "Hi"}]}]})
    assert r.status_code == 200 and r.text.count("data: ") == len(fake_wire.WORDS)
    received = fake_gemini.last()
    assert received.query == "alt=sse"
    assert_clean_upstream(received, key)
    assert key not in kylon.read_log()


@pytest.mark.parametrize("problem", ["missing", "unknown", "revoked"])
def test_bad_keys_get_401_in_gemini_shape(kylon, fake_gemini, problem):
    key = kylon.bad_key(problem)
    r = httpx.post(kylon.url + "/proxy/gemini/v1beta/models/gemini-2.5-flash:generateContent",
                   headers={"x-goog-api-key": key} if key else {}, json={"contents": []})
    assert r.status_code == 401
    error = r.json()["error"]
    assert error["code"] == 401 and error["status"] == "UNAUTHENTICATED" and error["message"]
    assert fake_gemini.received == []


def test_sdk_raises_its_usual_error_for_a_bad_key(kylon, fake_gemini):
    with pytest.raises(genai_errors.ClientError) as err:
        client(kylon, "pak_" + "y" * 43).models.generate_content(model="gemini-2.5-flash", contents="Hi")
    assert err.value.code == 401 and err.value.status == "UNAUTHENTICATED"
    assert fake_gemini.received == []


def test_no_credits_gets_402_before_upstream(kylon, fake_gemini):
    _, key = kylon.agent_with_key("0")
    with pytest.raises(genai_errors.APIError) as err:
        client(kylon, key).models.generate_content(model="gemini-2.5-flash", contents="Hi")
    assert err.value.code == 402
    assert fake_gemini.received == []


# -- pass-through -------------------------------------------------------------------


def test_passthrough_calls_are_authenticated_recorded_and_free(kylon, fake_gemini, agent_key):
    agent, key = agent_key
    list(client(kylon, key).files.list())
    received = fake_gemini.last()
    assert received.method == "GET" and received.path.endswith("/files")
    assert_clean_upstream(received, key)
    # The model listing is a route of its own (filtered by allowed models), free too.
    models = list(client(kylon, key).models.list())
    assert [m.name for m in models] == [m["name"] for m in fake_wire.MODELS]
    assert_clean_upstream(fake_gemini.last(), key)
    records = kylon.usage_for_agent(agent["id"], 2)
    assert sorted(r["route"] for r in records) == ["/v1/files", "models.list"]
    for record in records:
        assert record["status"] == "completed"
        assert Decimal(record["credits"]) == 0 and record["estimated"] is False
    r = httpx.get(kylon.url + "/proxy/gemini/v1beta/files")
    assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"


# -- uploads --------------------------------------------------------------------------


def test_sdk_upload_through_kylon_then_use_the_file(kylon, fake_gemini, agent_key):
    agent, key = agent_key
    data = bytes(range(256)) * 1200  # 300 KB
    c = client(kylon, key)
    file = c.files.upload(file=io.BytesIO(data), config={"mime_type": "application/pdf", "display_name": "report"})
    assert file.display_name == "report" and file.size_bytes == len(data)
    start, chunk = fake_gemini.received[:2]
    assert urlsplit(start.path).path.endswith("/files") and start.path.startswith("/upload/")
    assert start.headers["x-goog-upload-command"] == "start"
    assert start.headers["x-goog-upload-header-content-length"] == str(len(data))
    assert_clean_upstream(start, key)
    # The bytes came through Kylon (it adds the operator's key; the SDK sends
    # none) to the session URL upstream gave, not to Kylon's own token.
    assert chunk.body == data and chunk.headers["x-goog-upload-command"] == "upload, finalize"
    assert chunk.headers["x-goog-api-key"] == OPERATOR_KEY
    assert chunk.query.startswith("upload_id=ABg") and "kus_" not in chunk.everything()
    assert fake_gemini.file_data[file.name.split("/")[1]] == data

    while file.state.name != "ACTIVE":
        file = c.files.get(name=file.name)
    answer = c.models.generate_content(model="gemini-2.5-flash", contents=[file, "Summarise this report."])
    assert answer.text == "Hello from the fake Gemini!"
    sent = fake_gemini.last()
    assert file.uri.encode() in sent.body
    records = kylon.usage_for_agent(agent["id"], 5)
    uploads = [r for r in records if r["route"] == "files.upload"]
    assert len(uploads) == 2 and all(Decimal(r["credits"]) == 0 for r in uploads)
    assert kylon.balance(agent["id"]) == Decimal("100") - FLASH_CALL


def start_upload(kylon, key, size, path="/proxy/gemini/upload/v1beta/files"):
    r = httpx.post(
        kylon.url + path,
        headers={
            "x-goog-api-key": key,
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(size),
            "X-Goog-Upload-Header-Content-Type": "text/plain",
        },
        json={"file": {"displayName": "notes.txt"}},
    )
    assert r.status_code == 200, r.text
    return r


def send_chunk(url, data, offset, final):
    # As the SDK does: no key, and the start call's JSON Content-Type.
    return httpx.post(
        url,
        content=data,
        headers={
            "Content-Type": "application/json",
            "X-Goog-Upload-Command": "upload, finalize" if final else "upload",
            "X-Goog-Upload-Offset": str(offset),
        },
    )


def test_resumable_upload_in_chunks_without_a_key(kylon, fake_gemini, agent_key):
    _, key = agent_key
    start = start_upload(kylon, key, 200)
    url = start.headers["x-goog-upload-url"]
    assert url.startswith(kylon.url + "/proxy/gemini/upload/v1beta/files?upload_id=kus_")
    assert start.headers["x-goog-upload-control-url"] == url
    assert fake_gemini.url not in str(start.headers) and "x-guploader-uploadid" not in start.headers
    first = send_chunk(url, b"a" * 100, 0, final=False)
    assert first.status_code == 200 and first.headers["x-goog-upload-status"] == "active"
    last = send_chunk(url, b"b" * 100, 100, final=True)
    assert last.status_code == 200 and last.headers["x-goog-upload-status"] == "final"
    assert last.json()["file"]["sizeBytes"] == "200"
    # Finished: the session is gone.
    again = send_chunk(url, b"c", 200, final=True)
    assert again.status_code == 401 and again.headers["x-goog-upload-status"] == "final"
    assert again.json()["error"]["status"] == "UNAUTHENTICATED"
    assert url.split("upload_id=")[1].split("&")[0] not in kylon.read_log()


@pytest.mark.parametrize("upload_id", ["kus_" + "A" * 43, "ABgVH8example-google-upload-id", ""])
def test_chunk_for_an_unknown_session_is_refused(kylon, fake_gemini, upload_id):
    r = send_chunk(kylon.url + f"/proxy/gemini/upload/v1beta/files?upload_id={upload_id}&upload_protocol=resumable",
                   b"x" * 10, 0, final=True)
    assert r.status_code == 401 and r.headers["x-goog-upload-status"] == "final"
    error = r.json()["error"]
    assert error["code"] == 401 and error["status"] == "UNAUTHENTICATED" and "upload session" in error["message"]
    assert fake_gemini.received == []


def test_revoking_the_key_ends_its_uploads(kylon, fake_gemini):
    agent = kylon.create_agent("10")
    created = kylon.create_key(agent["id"])
    url = start_upload(kylon, created["key"], 10).headers["x-goog-upload-url"]
    assert kylon.admin("DELETE", f"/keys/{created['id']}").status_code == 200
    fake_gemini.reset()
    r = send_chunk(url, b"x" * 10, 0, final=True)
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    assert fake_gemini.received == []


def test_upload_sessions_expire_and_urls_follow_the_public_url(make_kylon, fakes):
    fake = fakes["gemini"]
    kylon = make_kylon({"KYLON_GEMINI_UPLOAD_SESSION_SECONDS": "0.3", "KYLON_PUBLIC_URL": "https://kylon.example.test"})
    _, key = kylon.agent_with_key("10")
    url = start_upload(kylon, key, 10).headers["x-goog-upload-url"]
    assert url.startswith("https://kylon.example.test/proxy/gemini/upload/v1beta/files?upload_id=kus_")
    time.sleep(0.4)
    fake.reset()
    r = send_chunk(kylon.url + url[len("https://kylon.example.test"):], b"x" * 10, 0, final=True)
    assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
    assert fake.received == []


# -- paths that try to leave the provider's API ------------------------------------------


def raw_request(kylon, method, path, headers):
    """Sends `path` byte for byte (httpx would normalise dot segments)."""
    conn = http.client.HTTPConnection("127.0.0.1", kylon.port, timeout=10)
    conn.putrequest(method, path, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


@pytest.mark.parametrize(
    "path",
    [
        "/proxy/gemini/v1beta/../../admin/api/agents",
        "/proxy/gemini/v1beta/models/..",
        "/proxy/gemini/v1beta/%2e%2e/%2E%2E/secrets",
        "/proxy/gemini/v1beta/files%2f..%2fx",
        "/proxy/gemini//127.0.0.1:1/v1beta/models",
        "/proxy/gemini/v1beta\\..\\..\\x",
        "/proxy/gemini/upload/../v1beta/models",
        "/proxy/gemini/upload/v1beta/%2e%2e/files",
    ],
)
def test_paths_outside_the_api_are_refused(kylon, fake_gemini, agent_key, path):
    _, key = agent_key
    status, body = raw_request(kylon, "GET", path, {"x-goog-api-key": key})
    assert status in (400, 404), body
    assert json.loads(body)["error"]["code"] == status
    assert fake_gemini.received == []


def test_free_calls_need_only_a_positive_balance(kylon, fake_gemini):
    """Uploads and countTokens cost nothing, however large."""
    agent, key = kylon.agent_with_key("0.001")
    c = client(kylon, key)
    file = c.files.upload(file=io.BytesIO(b"z" * 400_000), config={"mime_type": "text/plain"})
    assert file.size_bytes == 400_000
    assert c.models.count_tokens(model="gemini-2.5-flash", contents="x" * 100_000).total_tokens
    assert kylon.balance(agent["id"]) == Decimal("0.001")


def test_stream_without_sse_is_billed_from_the_json_array(kylon, fake_gemini, agent_key):
    """Without alt=sse Gemini streams one JSON array; its last element has the usage."""
    agent, key = agent_key
    r = httpx.post(kylon.url + "/proxy/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent",
                   headers={"x-goog-api-key": key}, json={"contents": [{"parts": [{"text": "Hi"}]}]})
    assert r.status_code == 200 and isinstance(r.json(), list)
    record = kylon.usage(r.headers["x-kylon-request-id"])
    assert record["stream"] is True and record["estimated"] is False
    assert record["input_tokens"] == INPUT and record["output_tokens"] == OUTPUT
    assert Decimal(record["credits"]) == FLASH_CALL
    assert kylon.balance(agent["id"]) == Decimal("100") - FLASH_CALL
