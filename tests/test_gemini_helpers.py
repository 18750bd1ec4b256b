"""Kylon's Gemini helpers (docs/gemini-helpers.md): upload URLs, file
understanding, and video/audio understanding, against the fake Gemini API."""

import base64
import io
import json
from decimal import Decimal

import httpx
import pytest
from google import genai

from .fakes import gemini_fake as fake_wire
from .test_gemini import FLASH_CALL, INPUT, OUTPUT, assert_clean_upstream

PDF = b"%PDF-1.4 fake document " * 100


@pytest.fixture
def fake_gemini(fakes):
    fake = fakes["gemini"]
    fake.reset()
    return fake


def helper(kylon, key, name, body):
    return httpx.post(f"{kylon.url}/proxy/gemini/{name}", headers={"x-goog-api-key": key}, json=body, timeout=10)


def assert_gemini_400(response, *words):
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT"
    for word in words:
        assert word in error["message"]


def uploaded_file(kylon, key, fake, data=PDF, mime_type="application/pdf"):
    """An ACTIVE file uploaded through Kylon with the SDK."""
    c = genai.Client(api_key=key, http_options={"base_url": kylon.url + "/proxy/gemini"})
    file = c.files.upload(file=io.BytesIO(data), config={"mime_type": mime_type})
    while file.state.name != "ACTIVE":
        file = c.files.get(name=file.name)
    fake.reset()
    return file


def sent_generate_content(fake):
    received = fake.last()
    assert received.method == "POST" and received.path.endswith(":generateContent")
    return received, json.loads(received.body)


# -- files/upload-urls -----------------------------------------------------------------


def test_upload_urls(kylon, fake_gemini, agent_key):
    agent, key = agent_key
    r = helper(kylon, key, "files/upload-urls", {"files": [
        {"display_name": "report.pdf", "mime_type": "application/pdf", "size_bytes": len(PDF)},
        {"display_name": "clip", "mime_type": "video/mp4", "size_bytes": 1000},
    ]})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["direct"] is False and len(answer["files"]) == 2
    first = answer["files"][0]
    assert first["display_name"] == "report.pdf" and first["mime_type"] == "application/pdf"
    assert first["upload_url"].startswith(kylon.url + "/proxy/gemini/upload/v1beta/files?upload_id=kus_")
    assert first["expires_at"].endswith("Z") and first["upload_method"] == "POST"
    starts = fake_gemini.received
    assert len(starts) == 2
    assert starts[0].headers["x-goog-upload-command"] == "start"
    assert starts[0].headers["x-goog-upload-header-content-length"] == str(len(PDF))
    assert starts[1].headers["x-goog-upload-header-content-type"] == "video/mp4"
    assert json.loads(starts[0].body)["file"]["displayName"] == "report.pdf"
    for start in starts:
        assert_clean_upstream(start, key)

    # The bytes, keyless, to the URL Kylon gave, with the headers it said.
    upload = httpx.post(first["upload_url"], content=PDF, headers=first["upload_headers"])
    assert upload.status_code == 200 and upload.headers["x-goog-upload-status"] == "final"
    file = upload.json()["file"]
    assert file["mimeType"] == "application/pdf" and file["displayName"] == "report.pdf"
    assert fake_gemini.last().body == PDF

    record = kylon.usage(r.headers["x-kylon-request-id"])
    assert record["route"] == "files.upload-urls" and record["status"] == "completed"
    assert Decimal(record["credits"]) == 0
    assert kylon.balance(agent["id"]) == Decimal("100")


@pytest.mark.parametrize(
    "body, words",
    [
        ({}, ["'files' is required"]),
        ({"files": []}, ["'files' is required"]),
        ({"files": [{"mime_type": 7, "size_bytes": 10}]}, ["files[0].mime_type is required"]),
        ({"files": [{"size_bytes": 10}]}, ["mime_type is required"]),
        ({"files": [{"mime_type": "text/plain\r\nX-Evil: 1", "size_bytes": 10}]}, ["printable"]),
        ({"files": [{"mime_type": "application/pdf", "size_bytes": 0}]}, ["size_bytes"]),
        ({"files": [{"mime_type": "application/pdf", "size_bytes": "12"}]}, ["size_bytes"]),
        ({"files": [{"mime_type": "application/pdf", "size_bytes": 1}] * 21}, ["At most 20"]),
        ("not an object", ["JSON object"]),
    ],
)
def test_upload_urls_refuses_bad_requests(kylon, fake_gemini, agent_key, body, words):
    _, key = agent_key
    r = helper(kylon, key, "files/upload-urls", body)
    assert_gemini_400(r, *words)
    assert fake_gemini.received == []
    record = kylon.usage(r.headers["x-kylon-request-id"])
    assert record["status"] == "rejected" and record["http_status"] == 400


@pytest.mark.parametrize("mime_type", ["application/zip", "application/octet-stream", "model/x-kylon-test"])
def test_upload_urls_pass_any_mime_type_to_gemini(kylon, fake_gemini, agent_key, mime_type):
    """The provider decides which types it accepts, not the gateway (issue 12)."""
    _, key = agent_key
    r = helper(kylon, key, "files/upload-urls", {"files": [{"mime_type": mime_type, "size_bytes": 10}]})
    assert r.status_code == 200, r.text
    assert r.json()["files"][0]["mime_type"] == mime_type
    assert fake_gemini.last().headers["x-goog-upload-header-content-type"] == mime_type


def test_direct_upload_urls(make_kylon, fakes):
    fake = fakes["gemini"]
    kylon = make_kylon({"KYLON_GEMINI_DIRECT_UPLOAD_URLS": "1"})
    _, key = kylon.agent_with_key("10")
    r = helper(kylon, key, "files/upload-urls", {"files": [{"mime_type": "text/plain", "size_bytes": 5}]})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["direct"] is True
    assert answer["files"][0]["upload_url"].startswith(fake.url + "/upload/v1beta/files?upload_id=")
    assert answer["files"][0]["expires_at"] is None


def test_helpers_need_a_key_and_post(kylon, fake_gemini, agent_key):
    _, key = agent_key
    r = httpx.post(kylon.url + "/proxy/gemini/file-understanding", json={})
    assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
    r = httpx.get(kylon.url + "/proxy/gemini/files/upload-urls", headers={"x-goog-api-key": key})
    assert r.status_code == 405 and r.json()["error"]["code"] == 405
    assert fake_gemini.received == []


# -- file-understanding -------------------------------------------------------------------


def test_file_understanding_with_an_uploaded_file(kylon, fake_gemini, agent_key):
    agent, key = agent_key
    file = uploaded_file(kylon, key, fake_gemini)
    r = helper(kylon, key, "file-understanding", {
        "file_uri": file.uri, "mime_type": "application/pdf", "prompt": "Summarise this.",
        "system_instruction": "Be brief.", "max_output_tokens": 200,
    })
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["text"] == "Hello from the fake Gemini!" and answer["model"] == "gemini-2.5-flash"
    assert answer["finish_reason"] == "STOP"
    usage = answer["usage"]
    assert usage["input_tokens"] == INPUT and usage["output_tokens"] == OUTPUT
    assert usage["cached_input_tokens"] == fake_wire.CACHED_TOKENS
    assert usage["reasoning_tokens"] == fake_wire.THOUGHTS_TOKENS and usage["estimated"] is False
    assert Decimal(usage["credits"]) == FLASH_CALL

    received, sent = sent_generate_content(fake_gemini)
    assert received.path == "/v1beta/models/gemini-2.5-flash:generateContent" and received.query == ""
    assert_clean_upstream(received, key)
    assert sent["contents"] == [{"role": "user", "parts": [
        {"fileData": {"fileUri": file.uri, "mimeType": "application/pdf"}}, {"text": "Summarise this."}]}]
    assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert sent["generationConfig"] == {"maxOutputTokens": 200}

    record = kylon.usage(r.headers["x-kylon-request-id"])
    assert record["route"] == "file-understanding" and record["model"] == "gemini-2.5-flash"
    assert record["status"] == "completed" and record["input_tokens"] == INPUT
    assert Decimal(record["credits"]) == FLASH_CALL
    assert kylon.balance(agent["id"]) == Decimal("100") - FLASH_CALL


def test_file_understanding_with_inline_data_and_a_model(kylon, fake_gemini, agent_key):
    agent, key = agent_key
    data = base64.b64encode(b"\x89PNG fake image").decode()
    r = helper(kylon, key, "file-understanding", {
        "inline_data": {"mime_type": "image/png", "data": data}, "prompt": "What is this?",
        "model": "gemini-2.5-flash-lite",
    })
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "gemini-2.5-flash-lite"
    received, sent = sent_generate_content(fake_gemini)
    assert received.path == "/v1beta/models/gemini-2.5-flash-lite:generateContent"
    assert sent["contents"][0]["parts"][0] == {"inlineData": {"mimeType": "image/png", "data": data}}
    lite = ((INPUT - fake_wire.CACHED_TOKENS) * Decimal("0.10") + fake_wire.CACHED_TOKENS * Decimal("0.01")
            + OUTPUT * Decimal("0.40")) / 1_000_000
    assert Decimal(kylon.usage(r.headers["x-kylon-request-id"])["credits"]) == lite
    assert kylon.balance(agent["id"]) == Decimal("100") - lite


def test_file_understanding_passes_gemini_errors_through(kylon, fake_gemini, agent_key):
    agent, key = agent_key
    missing = fake_gemini.url + "/v1beta/files/doesnotexist"
    r = helper(kylon, key, "file-understanding", {"file_uri": missing, "mime_type": "application/pdf",
                                                   "prompt": "Summarise."})
    assert r.status_code == 403 and r.json()["error"]["status"] == "PERMISSION_DENIED"
    record = kylon.usage(r.headers["x-kylon-request-id"])
    assert record["status"] == "upstream_error" and Decimal(record["credits"]) == 0
    r = helper(kylon, key, "file-understanding", {"inline_data": {"mime_type": "text/plain", "data": "aGk="},
                                                   "prompt": "Hi", "model": "error-429"})
    assert r.status_code == 429 and r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert kylon.balance(agent["id"]) == Decimal("100")


INLINE_PDF = {"mime_type": "application/pdf", "data": base64.b64encode(PDF).decode()}


@pytest.mark.parametrize(
    "body, words",
    [
        ({"prompt": "Hi"}, ["'file_uri'", "'inline_data'"]),
        ({"prompt": "Hi", "inline_data": INLINE_PDF, "file_uri": "https://x/v1beta/files/a",
          "mime_type": "application/pdf"}, ["not both"]),
        ({"inline_data": INLINE_PDF}, ["'prompt' is required"]),
        ({"inline_data": INLINE_PDF, "prompt": "  "}, ["'prompt' is required"]),
        ({"inline_data": {"mime_type": "application/zip", "data": "aGk="}, "prompt": "Hi"},
         ["Unsupported MIME type 'application/zip'"]),
        ({"inline_data": {"mime_type": "application/pdf", "data": "not base64!"}, "prompt": "Hi"}, ["base64"]),
        ({"file_uri": "https://x/v1beta/files/a", "prompt": "Hi"}, ["'mime_type' is required"]),
        ({"file_uri": "files/abc", "mime_type": "application/pdf", "prompt": "Hi"}, ["'file_uri'"]),
        ({"inline_data": INLINE_PDF, "prompt": "Hi", "model": "../../admin"}, ["'model'"]),
        ({"inline_data": INLINE_PDF, "prompt": "Hi", "temperature": 9}, ["'temperature'"]),
    ],
)
def test_file_understanding_refuses_bad_requests(kylon, fake_gemini, agent_key, body, words):
    _, key = agent_key
    r = helper(kylon, key, "file-understanding", body)
    assert_gemini_400(r, *words)
    assert fake_gemini.received == []


# -- video-audio-understanding ---------------------------------------------------------------


def test_video_understanding_with_a_clip(kylon, fake_gemini, agent_key):
    agent, key = agent_key
    file = uploaded_file(kylon, key, fake_gemini, data=b"\x00\x00\x00\x18ftypmp42" * 50, mime_type="video/mp4")
    r = helper(kylon, key, "video-audio-understanding", {
        "file_uri": file.uri, "mime_type": "video/mp4", "prompt": "What happens?",
        "start_offset": "1:30", "end_offset": 125.5, "fps": 2, "media_resolution": "low", "model": "gemini-2.5-pro",
    })
    assert r.status_code == 200, r.text
    assert r.json()["text"] == "Hello from the fake Gemini!" and r.json()["model"] == "gemini-2.5-pro"
    _, sent = sent_generate_content(fake_gemini)
    assert sent["contents"][0]["parts"] == [
        {"fileData": {"fileUri": file.uri, "mimeType": "video/mp4"},
         "videoMetadata": {"startOffset": "90s", "endOffset": "125.5s", "fps": 2}},
        {"text": "What happens?"},
    ]
    assert sent["generationConfig"] == {"mediaResolution": "MEDIA_RESOLUTION_LOW"}
    record = kylon.usage(r.headers["x-kylon-request-id"])
    assert record["route"] == "video-audio-understanding" and record["model"] == "gemini-2.5-pro"
    pro = ((INPUT - fake_wire.CACHED_TOKENS) * Decimal("1.25") + fake_wire.CACHED_TOKENS * Decimal("0.125")
           + OUTPUT * Decimal("10")) / 1_000_000
    assert Decimal(record["credits"]) == pro == Decimal(r.json()["usage"]["credits"])
    assert kylon.balance(agent["id"]) == Decimal("100") - pro


def test_audio_understanding_clips_by_timestamps_in_the_prompt(kylon, fake_gemini, agent_key):
    _, key = agent_key
    audio = {"mime_type": "audio/mpeg", "data": base64.b64encode(b"ID3 fake mp3").decode()}
    r = helper(kylon, key, "video-audio-understanding", {
        "inline_data": audio, "prompt": "Transcribe.", "start_offset": "90s", "end_offset": "02:05",
    })
    assert r.status_code == 200, r.text
    _, sent = sent_generate_content(fake_gemini)
    parts = sent["contents"][0]["parts"]
    assert parts[0] == {"inlineData": {"mimeType": "audio/mpeg", "data": audio["data"]}}
    assert parts[1]["text"] == "Consider only the part of the audio from 01:30 to 02:05.\n\nTranscribe."


@pytest.mark.parametrize(
    "body, words",
    [
        ({"inline_data": INLINE_PDF, "prompt": "Hi"}, ["Unsupported MIME type 'application/pdf'"]),
        ({"file_uri": "https://x/v1beta/files/a", "mime_type": "video/mp4", "prompt": "Hi",
          "start_offset": 30, "end_offset": 10}, ["'end_offset' must come after"]),
        ({"file_uri": "https://x/v1beta/files/a", "mime_type": "video/mp4", "prompt": "Hi",
          "start_offset": "soon"}, ["'start_offset'"]),
        ({"file_uri": "https://x/v1beta/files/a", "mime_type": "video/mp4", "prompt": "Hi", "fps": 0}, ["'fps'"]),
        ({"file_uri": "https://x/v1beta/files/a", "mime_type": "audio/wav", "prompt": "Hi", "fps": 1},
         ["video only"]),
        ({"file_uri": "https://x/v1beta/files/a", "mime_type": "video/mp4", "prompt": "Hi",
          "media_resolution": "ultra"}, ["'media_resolution'"]),
    ],
)
def test_video_audio_understanding_refuses_bad_requests(kylon, fake_gemini, agent_key, body, words):
    _, key = agent_key
    r = helper(kylon, key, "video-audio-understanding", body)
    assert_gemini_400(r, *words)
    assert fake_gemini.received == []
