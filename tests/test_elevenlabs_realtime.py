"""ElevenLabs' realtime WebSockets through Kylon, on SQLite and MariaDB (the
`kylon` fixture), with the official `elevenlabs` SDK where it has a client
(realtime text to speech, realtime speech to text) and a plain `websockets`
client elsewhere (multi-stream-input, a conversation), against the fake's
WebSocket side (tests/fakes/elevenlabs_realtime.py).

The SDK's realtime text to speech always connects with `wss://`: those tests
go through the shipped nginx configuration with TLS in front of Kylon, as a
deployment does (the test's certificate is trusted through SSL_CERT_FILE).
"""

import asyncio
import base64
import json
import socket
import struct
import time
from decimal import Decimal

import pytest
import websockets.sync.client
from elevenlabs import ElevenLabs
from elevenlabs.conversational_ai.conversation import Conversation
from elevenlabs.core.api_error import ApiError
from elevenlabs.realtime import AudioFormat, CommitStrategy, RealtimeEvents
from websockets.exceptions import InvalidStatus

from .conftest import CREATED_SECRETS
from .test_nginx import Front

OPERATOR_KEY = "sk_operator_elevenlabs_secret"
VOICE = "21m00Tcm4TlvDq8ikWAM"
MULTILINGUAL = Decimal("0.0003")  # credits per character
FLASH = Decimal("0.00015")
UNMETERED = "operator:unmetered"


@pytest.fixture(scope="session")
def fake_elevenlabs(fakes):
    return fakes["elevenlabs"]


@pytest.fixture(scope="module")
def front(kylon, tmp_path_factory):
    """nginx with TLS in front of the session's Kylon, its certificate trusted."""
    front = Front(kylon, tmp_path_factory.mktemp("nginx-ws"))
    yield front
    front.stop()


@pytest.fixture
def tls_client(front, monkeypatch):
    """An ElevenLabs SDK client pointed at Kylon through nginx."""
    monkeypatch.setenv("SSL_CERT_FILE", front.cert)

    def make(key):
        return ElevenLabs(base_url=front.url + "/proxy/elevenlabs", api_key=key, timeout=10)

    return make


def agent(kylon, credits="100", skills=("elevenlabs",)):
    agent, key = kylon.agent_with_key(credits, skills=list(skills))
    CREATED_SECRETS.add(key)
    return agent, key


def ws_url(kylon, path):
    return kylon.url.replace("http://", "ws://") + "/proxy/elevenlabs" + path


def sent_audio(fake_socket):
    """The audio the fake sent on a socket, in order."""
    return b"".join(base64.b64decode(m["audio"]) for m in fake_socket.server_messages if m.get("audio"))


def only_operator_key(fake_socket):
    fake_socket.handshake.assert_only_operator_credential("xi-api-key", OPERATOR_KEY)
    assert "pak_" not in json.dumps(fake_socket.client_messages)


def session_record(kylon, agent_id):
    """The session's usage record: one, and no second one after it."""
    records = kylon.usage_for_agent(agent_id, 1)
    time.sleep(0.3)  # a few flushes of the batch writer
    records = kylon.usage_for_agent(agent_id, 1)
    assert len(records) == 1, records
    return records[0]


TEXT = ["Hello there, ", "this is Kylon speaking ", "in real time, ", "chunk by chunk. ", "Goodbye."]


# -- realtime text to speech (stream-input), the SDK's convert_realtime -------------------


def test_convert_realtime_gets_the_audio_and_bills_the_characters(kylon, fake_elevenlabs, tls_client):
    agent_row, key = agent(kylon)
    audio = b"".join(tls_client(key).text_to_speech.convert_realtime(
        VOICE, text=iter(TEXT), model_id="eleven_flash_v2_5"))

    fake_socket = fake_elevenlabs.last_socket()
    assert fake_socket.handshake.path == f"/v1/text-to-speech/{VOICE}/stream-input"
    assert fake_socket.handshake.query == "model_id=eleven_flash_v2_5&output_format=mp3_44100_128"
    assert audio and audio == sent_audio(fake_socket)  # byte-exact, every piece
    assert fake_socket.server_messages[-1] == {"isFinal": True}
    only_operator_key(fake_socket)

    spoken = fake_socket.text_sent()
    assert spoken.split() == " ".join(TEXT).split()  # the SDK's chunker re-spaces the text
    record = session_record(kylon, agent_row["id"])
    assert record["provider"] == "elevenlabs" and record["route"] == "text_to_speech.stream_input"
    assert record["status"] == "completed" and record["model"] == "eleven_flash_v2_5" and record["stream"] is True
    assert record["unit"] == "characters" and Decimal(record["units"]) == len(spoken)
    assert record["estimated"] is True and record["fallback_price"] is False
    assert Decimal(record["credits"]) == len(spoken) * FLASH
    assert kylon.balance(agent_row["id"]) == Decimal("100") - len(spoken) * FLASH


def test_convert_realtime_with_a_bad_key_is_refused_before_the_upgrade(kylon, fake_elevenlabs, tls_client):
    fake_elevenlabs.reset()
    with pytest.raises(InvalidStatus) as refused:
        b"".join(tls_client("pak_not_a_key_at_all_000000000000").text_to_speech.convert_realtime(VOICE, text=iter(TEXT)))
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body)["detail"]["status"] == "invalid_api_key"
    assert fake_elevenlabs.sockets == []


def test_convert_realtime_without_the_skill_is_refused_by_the_gate(kylon, fake_elevenlabs, tls_client):
    fake_elevenlabs.reset()
    _, key = agent(kylon, skills=())
    with pytest.raises(InvalidStatus) as refused:
        b"".join(tls_client(key).text_to_speech.convert_realtime(VOICE, text=iter(TEXT)))
    assert refused.value.response.status_code == 403
    assert "elevenlabs" in json.loads(refused.value.response.body)["detail"]["message"]
    assert fake_elevenlabs.sockets == []


def test_running_out_of_credits_mid_stream_closes_with_4402(kylon, fake_elevenlabs, tls_client):
    # 0.009 credits: 30 characters at the multilingual rate; the text is 110.
    agent_row, key = agent(kylon, credits="0.009")
    text = ["Twenty characters.. "] * 5 + ["and ten.. "]
    with pytest.raises(ApiError) as closed:
        b"".join(tls_client(key).text_to_speech.convert_realtime(VOICE, text=iter(text), model_id="eleven_multilingual_v2"))
    assert closed.value.status_code == 4402 and "out of credits" in str(closed.value.body).lower()

    fake_socket = fake_elevenlabs.last_socket()
    assert fake_socket.wait_closed(2)
    assert len(fake_socket.text_sent()) <= 30  # what went past the credits never went upstream
    record = session_record(kylon, agent_row["id"])
    assert record["status"] == "out_of_credits" and record["http_status"] == 402
    assert Decimal(record["units"]) > 0 and Decimal(record["credits"]) == Decimal(record["units"]) * MULTILINGUAL
    assert Decimal(record["credits"]) >= Decimal("0.009") - 20 * MULTILINGUAL
    assert kylon.balance(agent_row["id"]) == Decimal("0.009") - Decimal(record["credits"])


def test_an_upstream_error_reaches_the_sdk_as_elevenlabs_sent_it(kylon, fake_elevenlabs, tls_client):
    agent_row, key = agent(kylon)
    with pytest.raises(ApiError) as failed:
        b"".join(tls_client(key).text_to_speech.convert_realtime("quota-exceeded", text=iter(TEXT)))
    # The SDK gives the error message it read, or the close reason when it was sending.
    assert failed.value.status_code == 1008 and "quota_exceeded" in str(failed.value.body)
    record = session_record(kylon, agent_row["id"])
    assert record["status"] == "upstream_error" and "1008 quota_exceeded" in record["error"]
    # Billed for the text it sent: at least what reached ElevenLabs (text sent
    # while the upstream's close was on its way is counted too).
    sent = len(fake_elevenlabs.last_socket().text_sent())
    assert 0 < sent <= Decimal(record["units"]) <= len("".join(TEXT)) + len(TEXT)


# -- multi-stream-input, a plain client -------------------------------------------


def test_multi_stream_input_relays_each_context_and_strips_a_key_in_a_message(kylon, fake_elevenlabs):
    agent_row, key = agent(kylon)
    url = ws_url(kylon, "/v1/text-to-speech/voice1/multi-stream-input?model_id=eleven_multilingual_v2")
    with websockets.sync.client.connect(url, additional_headers={"xi-api-key": key}) as ws:
        # ElevenLabs also reads a key from the first message: it must not go on.
        ws.send(json.dumps({"text": " ", "context_id": "a", "xi_api_key": key}))
        ws.send(json.dumps({"text": "First context. ", "context_id": "a", "flush": True}))
        ws.send(json.dumps({"text": " ", "context_id": "b"}))
        ws.send(json.dumps({"text": "Second. ", "context_id": "b", "flush": True}))
        ws.send(json.dumps({"context_id": "a", "close_context": True}))
        ws.send(json.dumps({"close_socket": True}))
        messages = [json.loads(m) for m in ws]
    assert [m["contextId"] for m in messages if m.get("audio")] == ["a", "b"]
    fake_socket = fake_elevenlabs.last_socket()
    assert fake_socket.client_messages[0] == {"text": " ", "context_id": "a"}
    only_operator_key(fake_socket)

    record = session_record(kylon, agent_row["id"])
    assert record["route"] == "text_to_speech.multi_stream_input" and record["status"] == "completed"
    assert Decimal(record["units"]) == len("First context. Second. ")
    assert Decimal(record["credits"]) == len("First context. Second. ") * MULTILINGUAL


def test_client_leaving_closes_the_upstream_within_a_second(kylon, fake_elevenlabs):
    agent_row, key = agent(kylon)
    ws = websockets.sync.client.connect(ws_url(kylon, "/v1/text-to-speech/silent/stream-input"),
                                        additional_headers={"xi-api-key": key})
    ws.send(json.dumps({"text": " "}))
    ws.send(json.dumps({"text": "Say this and then hang. ", "flush": True}))
    assert json.loads(ws.recv(timeout=5))["audio"]
    fake_socket = fake_elevenlabs.last_socket()
    # The client's connection breaks (no close frame): RST at once.
    ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.socket.close()
    left_at = time.monotonic()
    closed_at = fake_socket.wait_closed(5)
    assert closed_at is not None and closed_at - left_at < 1.0
    record = session_record(kylon, agent_row["id"])
    assert record["status"] == "disconnected"
    assert Decimal(record["units"]) == len("Say this and then hang. ")


# -- realtime speech to text, the SDK's client -----------------------------------------


def transcribe(kylon, key, chunks=2):
    async def run():
        client = ElevenLabs(base_url=kylon.url + "/proxy/elevenlabs", api_key=key)
        connection = await client.speech_to_text.realtime.connect(
            {"model_id": "scribe_v2_realtime", "audio_format": AudioFormat.PCM_16000, "sample_rate": 16000,
             "commit_strategy": CommitStrategy.MANUAL})
        texts, done = [], asyncio.Event()
        connection.on(RealtimeEvents.PARTIAL_TRANSCRIPT, lambda data: texts.append(data["text"]))
        connection.on(RealtimeEvents.COMMITTED_TRANSCRIPT, lambda data: (texts.append(data["text"]), done.set()))
        half_a_second = base64.b64encode(b"\x00\x01" * 8000).decode()
        for _ in range(chunks):
            await connection.send({"audio_base_64": half_a_second})
        await connection.commit()
        await asyncio.wait_for(done.wait(), 5)
        await connection.close()
        return texts

    return asyncio.run(run())


def test_realtime_speech_to_text_is_gated_as_unmetered(kylon, fake_elevenlabs):
    fake_elevenlabs.reset()
    _, key = agent(kylon)
    with pytest.raises(InvalidStatus) as refused:
        transcribe(kylon, key)
    assert refused.value.response.status_code == 403
    assert fake_elevenlabs.sockets == []


def test_realtime_speech_to_text_bills_seconds_of_audio(kylon, fake_elevenlabs):
    agent_row, key = agent(kylon, skills=("elevenlabs", UNMETERED))
    assert transcribe(kylon, key, chunks=3) == ["partial 1", "partial 2", "partial 3", "heard 3 chunks"]
    only_operator_key(fake_elevenlabs.last_socket())
    record = session_record(kylon, agent_row["id"])
    assert record["route"] == "speech_to_text.realtime" and record["model"] == "scribe_v2_realtime"
    assert record["unit"] == "seconds" and Decimal(record["units"]) == Decimal("1.5")
    # No shipped price: the fallback, flagged (docs/elevenlabs.md: set one per second).
    assert record["fallback_price"] is True and Decimal(record["credits"]) == Decimal("1.5") * MULTILINGUAL


# -- a conversation with an agent ------------------------------------------------------


def test_conversation_is_relayed_and_billed_by_session_time(kylon, fake_elevenlabs):
    agent_row, key = agent(kylon, skills=("elevenlabs", UNMETERED))
    with websockets.sync.client.connect(ws_url(kylon, "/v1/convai/conversation?agent_id=agent_1"),
                                        additional_headers={"xi-api-key": key}) as ws:
        ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
        assert json.loads(ws.recv(timeout=5))["type"] == "conversation_initiation_metadata"
        ws.send(json.dumps({"type": "user_message", "text": "Hi"}))
        seen = {}
        while "ping" not in seen or "audio" not in seen:
            message = json.loads(ws.recv(timeout=5))
            seen[message["type"]] = message
        ws.send(json.dumps({"type": "pong", "event_id": seen["ping"]["ping_event"]["event_id"]}))
        time.sleep(0.5)
    assert seen["agent_response"]["agent_response_event"]["agent_response"] == "You said: Hi"
    fake_socket = fake_elevenlabs.last_socket()
    assert fake_socket.handshake.query == "agent_id=agent_1"
    assert {"type": "pong", "event_id": seen["ping"]["ping_event"]["event_id"]} in fake_socket.client_messages
    only_operator_key(fake_socket)
    record = session_record(kylon, agent_row["id"])
    assert record["route"] == "convai.conversation" and record["model"] == "convai"
    assert record["unit"] == "seconds" and Decimal("0.5") <= Decimal(record["units"]) < Decimal("5")


def test_the_sdks_conversation_talks_through_a_signed_url_kylon_issues(kylon, fake_elevenlabs):
    agent_row, key = agent(kylon, skills=("elevenlabs", UNMETERED))
    fake_elevenlabs.reset()
    client = ElevenLabs(base_url=kylon.url + "/proxy/elevenlabs", api_key=key, timeout=10)
    signed_url = client.conversational_ai.conversations.get_signed_url(agent_id="agent_1").signed_url
    assert signed_url.startswith(ws_url(kylon, "/v1/convai/conversation?agent_id=agent_1&conversation_signature=kylon1_"))
    assert key not in signed_url and fake_elevenlabs.received == []  # Kylon's own answer

    replies = []
    conversation = Conversation(client, "agent_1", requires_auth=True, callback_agent_response=replies.append)
    conversation.start_session()
    deadline = time.monotonic() + 5
    while conversation._ws is None and time.monotonic() < deadline:
        time.sleep(0.01)
    conversation.send_user_message("Hi")
    while not replies and time.monotonic() < deadline:
        time.sleep(0.01)
    conversation.end_session()
    assert conversation.wait_for_session_end() == "conv_fake_0001"
    assert replies == ["You said: Hi"]

    fake_socket = fake_elevenlabs.last_socket()
    assert fake_socket.wait_closed(2)
    assert fake_socket.handshake.query.startswith("agent_id=agent_1&source=python_sdk")
    assert "conversation_signature" not in fake_socket.handshake.query
    only_operator_key(fake_socket)
    ticket = signed_url.split("conversation_signature=")[1]
    deadline = time.monotonic() + 2
    while "convai/conversation?" not in kylon.read_log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "conversation_signature=[redacted]" in kylon.read_log() and ticket not in kylon.read_log()
    # Our get_signed_url, the Conversation's own, and the session.
    records = kylon.usage_for_agent(agent_row["id"], 3)
    session, *signing = sorted(records, key=lambda r: r["route"] != "convai.conversation")
    assert session["route"] == "convai.conversation" and session["status"] == "completed"
    assert session["unit"] == "seconds" and Decimal(session["units"]) > 0
    for record in signing:
        assert record["route"] == "/v1/convai/conversation/get-signed-url" and record["status"] == "completed"
        assert record["http_status"] == 200 and Decimal(record["credits"]) == 0


def test_a_signed_url_is_refused_for_another_agent_a_forged_ticket_or_a_revoked_key(kylon, fake_elevenlabs):
    agent_row, key = agent(kylon, skills=("elevenlabs", UNMETERED))
    client = ElevenLabs(base_url=kylon.url + "/proxy/elevenlabs", api_key=key, timeout=10)
    signed_url = client.conversational_ai.conversations.get_signed_url(agent_id="agent_1").signed_url
    fake_elevenlabs.reset()
    for url in (signed_url.replace("agent_id=agent_1", "agent_id=agent_2"), signed_url[:-4] + "0000"):
        with pytest.raises(InvalidStatus) as refused:
            websockets.sync.client.connect(url).close()
        assert refused.value.response.status_code == 401
        assert "signed URL is invalid" in json.loads(refused.value.response.body)["detail"]["message"]
    key_id = kylon.admin("GET", f"/agents/{agent_row['id']}/keys").json()["data"][0]["id"]
    kylon.admin("DELETE", f"/keys/{key_id}")
    with pytest.raises(InvalidStatus) as refused:
        websockets.sync.client.connect(signed_url).close()
    assert refused.value.response.status_code == 401
    assert fake_elevenlabs.sockets == []


def test_a_signed_url_needs_what_the_conversation_needs(kylon, fake_elevenlabs):
    _, key = agent(kylon)
    client = ElevenLabs(base_url=kylon.url + "/proxy/elevenlabs", api_key=key, timeout=10)
    with pytest.raises(ApiError) as refused:
        client.conversational_ai.conversations.get_signed_url(agent_id="agent_1")
    assert refused.value.status_code == 403 and UNMETERED in refused.value.body["detail"]["message"]
