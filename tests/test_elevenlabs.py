"""ElevenLabs through Kylon, with the official `elevenlabs` SDK as the client,
on SQLite and on MariaDB (the `kylon` fixture): binary audio byte-exact, audio
streams relayed as they arrive, billing by characters, the `elevenlabs` gate."""

import base64
import json
import time
from decimal import Decimal

import pytest
from elevenlabs import ElevenLabs
from elevenlabs.core.api_error import ApiError
from elevenlabs.errors import UnprocessableEntityError

from .conftest import CREATED_SECRETS
from .fakes import elevenlabs_fake as wire

OPERATOR_KEY = "sk_operator_elevenlabs_secret"
VOICE = "21m00Tcm4TlvDq8ikWAM"
# The fake's character-cost collapses the spaces (18); Kylon's own count is 22.
TEXT = "Hello   there,   world"
COST = wire.character_cost(TEXT)
NO_RETRY = {"max_retries": 0}
# Credits per character: multilingual v2 / v3 $0.30 per 1K, flash / turbo $0.15 per 1K.
MULTILINGUAL = Decimal("0.0003")
FLASH = Decimal("0.00015")


def client(kylon, key):
    return ElevenLabs(base_url=kylon.url + "/proxy/elevenlabs", api_key=key, timeout=10)


@pytest.fixture(scope="session")
def fake_elevenlabs(fakes):
    return fakes["elevenlabs"]


@pytest.fixture
def agent(kylon):
    """An agent with 100 credits, the `elevenlabs` skill and a key."""
    agent, key = kylon.agent_with_key("100", skills=["elevenlabs"])
    CREATED_SECRETS.add(key)
    return agent, key


def assert_operator_key_only(received, key):
    received.assert_only_operator_credential("xi-api-key", OPERATOR_KEY)


# -- text to speech ----------------------------------------------------------------


def test_convert_returns_the_audio_byte_exact_billed_by_character_cost(kylon, fake_elevenlabs, agent):
    agent, key = agent
    with client(kylon, key).text_to_speech.with_raw_response.convert(
        VOICE, text=TEXT, model_id="eleven_multilingual_v2", output_format="mp3_22050_32"
    ) as raw:
        audio = b"".join(raw.data)
        headers = raw.headers
    assert audio == wire.audio_for(TEXT)
    assert headers["content-type"] == "audio/mpeg"
    assert headers["character-cost"] == str(COST) and headers["request-id"] == "fake-tts-request"
    assert OPERATOR_KEY not in str(headers)

    received = fake_elevenlabs.last()
    assert received.method == "POST" and received.path == f"/v1/text-to-speech/{VOICE}"
    assert received.query == "output_format=mp3_22050_32"
    assert json.loads(received.body)["text"] == TEXT
    assert_operator_key_only(received, key)

    record = kylon.usage(headers["x-kylon-request-id"])
    assert record["status"] == "completed" and record["http_status"] == 200
    assert record["provider"] == "elevenlabs" and record["route"] == "text_to_speech"
    assert record["model"] == "eleven_multilingual_v2" and record["stream"] is False
    assert record["unit"] == "characters" and Decimal(record["units"]) == COST != len(TEXT)
    assert record["input_tokens"] == 0 and record["output_tokens"] == 0
    assert record["estimated"] is False and record["fallback_price"] is False
    assert Decimal(record["credits"]) == COST * MULTILINGUAL
    assert kylon.balance(agent["id"]) == Decimal("100") - COST * MULTILINGUAL


def test_stream_relays_audio_chunks_as_they_arrive(kylon, fake_elevenlabs, agent):
    """The first chunk reaches the client while the upstream holds back the rest."""
    agent, key = agent
    fake_elevenlabs.release.clear()
    try:
        with client(kylon, key).text_to_speech.with_raw_response.stream(
            "held", text=TEXT, model_id="eleven_flash_v2_5", output_format="mp3_44100_128"
        ) as raw:
            chunks = iter(raw.data)
            first = next(chunks)
            assert first == wire.audio_for(TEXT)[: len(first)] and len(first) > 0
            assert not fake_elevenlabs.release.is_set()  # the upstream is still holding back
            fake_elevenlabs.release.set()
            audio = first + b"".join(chunks)
            headers = raw.headers
    finally:
        fake_elevenlabs.release.set()
    assert audio == wire.audio_for(TEXT)
    assert headers["content-type"] == "audio/mpeg" and headers["x-accel-buffering"] == "no"
    received = fake_elevenlabs.last()
    assert received.path == "/v1/text-to-speech/held/stream" and received.query == "output_format=mp3_44100_128"
    assert_operator_key_only(received, key)

    # No character-cost header on the stream: Kylon counts `text`, and says so.
    record = kylon.usage(headers["x-kylon-request-id"])
    assert record["route"] == "text_to_speech.stream" and record["stream"] is True
    assert record["status"] == "completed" and record["model"] == "eleven_flash_v2_5"
    assert record["unit"] == "characters" and Decimal(record["units"]) == len(TEXT)
    assert record["estimated"] is True and record["fallback_price"] is False
    assert Decimal(record["credits"]) == len(TEXT) * FLASH
    assert kylon.balance(agent["id"]) == Decimal("100") - len(TEXT) * FLASH


def test_stream_through_the_plain_sdk_call(kylon, agent):
    _, key = agent
    audio = b"".join(client(kylon, key).text_to_speech.stream(VOICE, text="Hi", model_id="eleven_turbo_v2_5"))
    assert audio == wire.audio_for("Hi")


def test_disconnect_mid_stream_closes_the_upstream(kylon, fake_elevenlabs, agent):
    """The upstream sends one chunk and then nothing for 30 s; the client leaves."""
    agent, key = agent
    with client(kylon, key).text_to_speech.with_raw_response.stream(
        "silent", text=TEXT, model_id="eleven_v3"
    ) as raw:
        next(iter(raw.data))
        request_id = raw.headers["x-kylon-request-id"]
        received = fake_elevenlabs.last()
        left_at = time.monotonic()
        raw.close()
    closed_at = fake_elevenlabs.wait_closed(received, timeout=5)
    assert closed_at is not None, "the upstream connection was never closed"
    assert closed_at - left_at < 1.5
    record = kylon.usage(request_id)
    assert record["status"] == "disconnected" and record["route"] == "text_to_speech.stream"
    # ElevenLabs bills the whole text once it started speaking.
    assert Decimal(record["units"]) == len(TEXT) and record["estimated"] is True
    assert Decimal(record["credits"]) == len(TEXT) * MULTILINGUAL
    assert kylon.balance(agent["id"]) == Decimal("100") - len(TEXT) * MULTILINGUAL


def test_with_timestamps_defaults_the_model(kylon, fake_elevenlabs, agent):
    agent, key = agent
    answer = client(kylon, key).text_to_speech.convert_with_timestamps(VOICE, text=TEXT)
    assert base64.b64decode(answer.audio_base_64) == wire.audio_for(TEXT)
    assert answer.alignment.characters == list(TEXT)
    assert fake_elevenlabs.last().path == f"/v1/text-to-speech/{VOICE}/with-timestamps"
    record = kylon.usage_for_agent(agent["id"], 1)[0]
    assert record["route"] == "text_to_speech" and record["model"] == "eleven_multilingual_v2"
    assert Decimal(record["units"]) == COST and record["estimated"] is False
    assert kylon.balance(agent["id"]) == Decimal("100") - COST * MULTILINGUAL


# -- reads and other paths ------------------------------------------------------------


def test_voices_and_models_cost_nothing(kylon, fake_elevenlabs, agent):
    agent, key = agent
    c = client(kylon, key)
    voices = c.voices.get_all(request_options=NO_RETRY)
    assert [v.name for v in voices.voices] == ["Rachel", "George"]
    assert fake_elevenlabs.last().method == "GET" and fake_elevenlabs.last().path == "/v1/voices"
    assert_operator_key_only(fake_elevenlabs.last(), key)
    models = c.models.list(request_options=NO_RETRY)
    assert [m.model_id for m in models] == ["eleven_multilingual_v2", "eleven_flash_v2_5"]
    assert fake_elevenlabs.last().path == "/v1/models"
    records = kylon.usage_for_agent(agent["id"], 2)
    assert sorted(r["route"] for r in records) == ["/v1/models", "/v1/voices"]
    for record in records:
        assert record["status"] == "completed" and Decimal(record["credits"]) == 0
        assert record["estimated"] is False and record["fallback_price"] is False
    assert kylon.balance(agent["id"]) == Decimal("100")


def test_other_paths_pass_through_with_any_method(kylon, fake_elevenlabs, agent):
    agent, key = agent
    c = client(kylon, key)
    assert c.history.list(request_options=NO_RETRY).history == []
    assert c.history.delete("hist_123", request_options=NO_RETRY).status == "ok"
    received = fake_elevenlabs.last()
    assert received.method == "DELETE" and received.path == "/v1/history/hist_123"
    assert_operator_key_only(received, key)
    records = kylon.usage_for_agent(agent["id"], 2)
    assert {r["route"] for r in records} == {"/v1/history", "/v1/history/hist_123"}
    assert all(Decimal(r["credits"]) == 0 for r in records)


def test_a_pass_through_path_reporting_characters_is_billed_at_the_fallback(kylon, fake_elevenlabs, agent):
    agent, key = agent
    inputs = [{"text": "Knock knock.", "voice_id": VOICE}, {"text": "Who is there?", "voice_id": "JBFqnCBsd6RMkjVDRZzb"}]
    audio = b"".join(client(kylon, key).text_to_dialogue.convert(inputs=inputs))
    text = "".join(i["text"] for i in inputs)
    assert audio == wire.audio_for(text, wire.CHUNK)
    assert fake_elevenlabs.last().path == "/v1/text-to-dialogue"
    record = kylon.usage_for_agent(agent["id"], 1)[0]
    cost = wire.character_cost(text)
    assert record["route"] == "/v1/text-to-dialogue" and Decimal(record["units"]) == cost
    assert record["fallback_price"] is True and record["estimated"] is False
    assert Decimal(record["credits"]) == cost * MULTILINGUAL  # the fallback: the dearest model
    assert kylon.balance(agent["id"]) == Decimal("100") - cost * MULTILINGUAL


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 422, 429])
def test_upstream_errors_pass_through(kylon, agent, status):
    agent, key = agent
    with pytest.raises(ApiError) as err:
        b"".join(client(kylon, key).text_to_speech.convert(f"error-{status}", text=TEXT))
    assert err.value.status_code == status
    assert err.value.body == wire.ERRORS[f"error-{status}"][1]
    if status == 422:
        assert isinstance(err.value, UnprocessableEntityError)
    if status == 429:
        assert err.value.body["detail"]["status"] == "system_busy"
    record = kylon.usage(err.value.headers["x-kylon-request-id"])
    assert record["status"] == "upstream_error" and record["http_status"] == status
    assert Decimal(record["credits"]) == 0
    assert kylon.balance(agent["id"]) == Decimal("100")


@pytest.mark.parametrize("problem", ["unknown", "no-credits"])
def test_kylon_errors_come_in_elevenlabs_shape(kylon, fake_elevenlabs, problem):
    if problem == "unknown":
        key, status, code = "pak_" + "y" * 43, 401, "invalid_api_key"
    else:
        _, key = kylon.agent_with_key("0", skills=["elevenlabs"])
        status, code = 402, "insufficient_credits"
    fake_elevenlabs.reset()
    with pytest.raises(ApiError) as err:
        b"".join(client(kylon, key).text_to_speech.convert(VOICE, text=TEXT))
    assert err.value.status_code == status
    assert err.value.body["detail"]["status"] == code and err.value.body["detail"]["message"]
    assert err.value.headers["x-kylon-request-id"].startswith("req_")
    assert fake_elevenlabs.received == []


# -- the gate ------------------------------------------------------------------------------


def test_the_elevenlabs_gate_is_seeded(kylon):
    gates = kylon.admin("GET", "/gates").json()["data"]
    assert {"provider": "elevenlabs", "route": "", "skill": "elevenlabs"} in [
        {k: g[k] for k in ("provider", "route", "skill")} for g in gates
    ]


def test_without_the_skill_nothing_goes_upstream_until_the_admin_grants_it(kylon, fake_elevenlabs):
    agent, key = kylon.agent_with_key("100", skills=["search"])
    CREATED_SECRETS.add(key)
    c = client(kylon, key)
    fake_elevenlabs.reset()
    for call in (lambda: b"".join(c.text_to_speech.convert(VOICE, text=TEXT)),
                 lambda: c.voices.get_all(request_options=NO_RETRY)):
        with pytest.raises(ApiError) as err:
            call()
        assert err.value.status_code == 403
        assert err.value.body["detail"]["status"] == "missing_skill"
        assert "'elevenlabs'" in err.value.body["detail"]["message"]
    assert fake_elevenlabs.received == []
    record = kylon.usage(err.value.headers["x-kylon-request-id"])
    assert record["status"] == "rejected" and record["http_status"] == 403

    r = kylon.admin("PATCH", f"/agents/{agent['id']}", json={"skills": ["search", "elevenlabs"]})
    assert r.status_code == 200, r.text
    assert b"".join(c.text_to_speech.convert(VOICE, text=TEXT)) == wire.audio_for(TEXT)
    assert len(fake_elevenlabs.received) == 1
