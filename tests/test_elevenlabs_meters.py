"""ElevenLabs' WebSocket meters on their own (the frames a session carries in,
usage out), and the fake's WebSocket side against the official SDK and a
plain client: what the end-to-end tests through Kylon stand on."""

import asyncio
import base64
import json
from decimal import Decimal

import pytest
import websockets.sync.client
from elevenlabs import ElevenLabs
from elevenlabs.realtime import AudioFormat, CommitStrategy, RealtimeEvents

from kylon.providers.base import Exchange
from kylon.providers.elevenlabs import ElevenLabs as ElevenLabsProvider
from kylon.providers.elevenlabs.realtime import (AudioMeter, CharacterMeter, SessionMeter, conversation_ticket,
                                                 ticket_key_hash, without_ticket)

OPERATOR_KEY = "sk_operator_elevenlabs_secret"


def exchange(query=""):
    return Exchange("req_test", None, "/v1/x", query=query)


# -- meters -------------------------------------------------------------------------


def test_character_meter_counts_the_text_sent_not_the_opening_space():
    ex = exchange("model_id=eleven_flash_v2_5&output_format=mp3_44100_128")
    meter = CharacterMeter(ex)
    assert ex.model == "eleven_flash_v2_5"
    assert meter.client_message(json.dumps({"text": " ", "voice_settings": None})) is None
    assert meter.usage() is None  # nothing spoken yet
    meter.client_message(json.dumps({"text": "Hello there, ", "try_trigger_generation": True}))
    meter.upstream_message(json.dumps({"audio": "AAAA", "isFinal": None}))
    meter.client_message(json.dumps({"text": "world. ", "flush": True}))
    meter.client_message(json.dumps({"text": ""}))
    usage = meter.usage()
    assert usage.unit == "characters" and usage.units == Decimal(len("Hello there, world. "))
    assert usage.estimated  # Kylon's count: ElevenLabs reports none on the socket


def test_character_meter_counts_every_context_of_a_multi_stream():
    meter = CharacterMeter(exchange())
    for message in ({"text": " ", "context_id": "a"}, {"text": "One. ", "context_id": "a"},
                    {"text": " ", "context_id": "b"}, {"text": "Two two. ", "context_id": "b", "flush": True},
                    {"context_id": "a", "close_context": True}, {"close_socket": True}):
        meter.client_message(json.dumps(message))
    assert meter.usage().units == len("One. ") + len("Two two. ")


def test_character_meter_defaults_to_elevenlabs_default_model():
    ex = exchange("output_format=pcm_16000")
    CharacterMeter(ex)
    assert ex.model == "eleven_multilingual_v2"


def test_a_key_in_a_message_is_taken_out_before_it_goes_upstream():
    meter = CharacterMeter(exchange())
    sent = meter.client_message(json.dumps({"text": " ", "xi_api_key": "pak_x", "authorization": "Bearer pak_x"}))
    assert json.loads(sent) == {"text": " "}
    assert meter.client_message(b"\x00 not json") is None  # binary frames pass as they are


def test_audio_meter_counts_seconds_of_audio_at_the_url_format():
    ex = exchange("model_id=scribe_v2_realtime&audio_format=pcm_16000&commit_strategy=manual")
    meter = AudioMeter(ex)
    assert ex.model == "scribe_v2_realtime" and meter.usage() is None
    one_second = base64.b64encode(b"\x01\x02" * 16000).decode()
    for _ in range(3):
        meter.client_message(json.dumps({"message_type": "input_audio_chunk", "audio_base_64": one_second,
                                         "commit": False, "sample_rate": 16000}))
    meter.client_message(json.dumps({"message_type": "input_audio_chunk", "audio_base_64": "", "commit": True}))
    usage = meter.usage()
    assert usage.unit == "seconds" and usage.units == Decimal("3.000")

    ulaw = AudioMeter(exchange("audio_format=ulaw_8000"))
    ulaw.client_message(json.dumps({"message_type": "input_audio_chunk", "audio_base_64": base64.b64encode(b"x" * 4001).decode()}))
    assert ulaw.usage().units == Decimal("0.500")  # 4001 bytes, padding and all


def test_session_meter_counts_seconds_from_the_agents_first_message():
    now = [100.0]
    ex = exchange("agent_id=agent_1")
    meter = SessionMeter(ex, clock=lambda: now[0])
    assert ex.model == "convai"
    meter.client_message(json.dumps({"type": "conversation_initiation_client_data"}))
    now[0] = 103.0
    assert meter.usage() is None  # the agent has not answered: nothing started
    meter.upstream_message(json.dumps({"type": "conversation_initiation_metadata"}))
    now[0] = 110.5
    assert meter.usage().unit == "seconds" and meter.usage().units == Decimal("7.500")


def test_a_conversation_ticket_holds_for_its_key_agent_and_time_only():
    provider = ElevenLabsProvider()
    provider.configure({"ELEVENLABS_API_KEY": "sk_one"})
    ticket = conversation_ticket(provider, "ab" * 32, "agent_1", now=1000)
    assert ticket_key_hash(provider, ticket, "agent_1", now=1000 + 899) == "ab" * 32
    assert ticket_key_hash(provider, ticket, "agent_1", now=1000 + 901) is None  # 15 minutes
    assert ticket_key_hash(provider, ticket, "agent_2", now=1000) is None
    assert ticket_key_hash(provider, ticket.replace("ab" * 32, "cd" * 32), "agent_1", now=1000) is None
    other = ElevenLabsProvider()
    other.configure({"ELEVENLABS_API_KEY": "sk_two"})  # another operator key: another secret
    assert ticket_key_hash(other, ticket, "agent_1", now=1000) is None
    assert ticket_key_hash(ElevenLabsProvider(), ticket, "agent_1", now=1000) is None  # not configured
    assert without_ticket(None, f"agent_id=a&conversation_signature={ticket}&source=python_sdk") == \
        "agent_id=a&source=python_sdk"
    assert without_ticket(None, "agent_id=a&conversation_signature=elevenlabs_own") == \
        "agent_id=a&conversation_signature=elevenlabs_own"


# -- the fake, directly ------------------------------------------------------------


@pytest.fixture(scope="session")
def fake_elevenlabs(fakes):
    return fakes["elevenlabs"]


def ws_url(fake, path):
    return fake.url.replace("http://", "ws://") + path


def test_fake_stream_input_speaks_the_protocol(fake_elevenlabs):
    url = ws_url(fake_elevenlabs, "/v1/text-to-speech/voice1/stream-input?model_id=eleven_flash_v2_5")
    with websockets.sync.client.connect(url, additional_headers={"xi-api-key": OPERATOR_KEY}) as ws:
        ws.send(json.dumps({"text": " ", "voice_settings": {"stability": 0.5}, "generation_config": {"chunk_length_schedule": [50]}}))
        ws.send(json.dumps({"text": "Hello there. ", "flush": True}))
        first = json.loads(ws.recv(timeout=5))
        ws.send(json.dumps({"text": ""}))
        rest = [json.loads(m) for m in ws]
    assert base64.b64decode(first["audio"]) and first["isFinal"] is None
    assert first["alignment"]["chars"] == list("Hello there. ") and "normalizedAlignment" in first
    assert rest[-1] == {"isFinal": True}
    socket = fake_elevenlabs.last_socket()
    assert socket.wait_closed() and socket.close_code == 1000 and socket.text_sent() == "Hello there. "


def test_fake_refuses_a_wrong_key_with_1008(fake_elevenlabs):
    url = ws_url(fake_elevenlabs, "/v1/text-to-speech/voice1/stream-input")
    with websockets.sync.client.connect(url) as ws:
        ws.send(json.dumps({"text": " ", "xi_api_key": "wrong"}))
        error = json.loads(ws.recv(timeout=5))
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert error["message"] == "Invalid API key" and closed.value.rcvd.code == 1008


def test_fake_multi_stream_input_answers_per_context(fake_elevenlabs):
    url = ws_url(fake_elevenlabs, "/v1/text-to-speech/voice1/multi-stream-input")
    with websockets.sync.client.connect(url, additional_headers={"xi-api-key": OPERATOR_KEY}) as ws:
        ws.send(json.dumps({"text": " ", "context_id": "a"}))
        ws.send(json.dumps({"text": "First. ", "context_id": "a", "flush": True}))
        ws.send(json.dumps({"text": " ", "context_id": "b"}))
        ws.send(json.dumps({"text": "Second. ", "context_id": "b", "flush": True}))
        ws.send(json.dumps({"context_id": "a", "close_context": True}))
        ws.send(json.dumps({"close_socket": True}))
        messages = [json.loads(m) for m in ws]
    audio = [m["contextId"] for m in messages if m.get("audio")]
    assert audio == ["a", "b"] and {"isFinal": True, "contextId": "a"} in messages


def test_fake_speech_to_text_through_the_sdk(fake_elevenlabs):
    async def transcribe():
        client = ElevenLabs(base_url=fake_elevenlabs.url, api_key=OPERATOR_KEY)
        connection = await client.speech_to_text.realtime.connect(
            {"model_id": "scribe_v2_realtime", "audio_format": AudioFormat.PCM_16000, "sample_rate": 16000,
             "commit_strategy": CommitStrategy.MANUAL})
        events = []
        done = asyncio.Event()
        connection.on(RealtimeEvents.SESSION_STARTED, lambda data: events.append(data["message_type"]))
        connection.on(RealtimeEvents.PARTIAL_TRANSCRIPT, lambda data: events.append(data["text"]))
        connection.on(RealtimeEvents.COMMITTED_TRANSCRIPT, lambda data: (events.append(data["text"]), done.set()))
        await connection.send({"audio_base_64": base64.b64encode(b"\x00\x01" * 1600).decode()})
        await connection.commit()
        await asyncio.wait_for(done.wait(), 5)
        await connection.close()
        return events

    assert asyncio.run(transcribe()) == ["session_started", "partial 1", "heard 1 chunks"]
    assert fake_elevenlabs.last_socket().handshake.query.startswith("model_id=scribe_v2_realtime&audio_format=pcm_16000")


def test_fake_conversation_answers_and_pings(fake_elevenlabs):
    url = ws_url(fake_elevenlabs, "/v1/convai/conversation?agent_id=agent_1")
    with websockets.sync.client.connect(url, additional_headers={"xi-api-key": OPERATOR_KEY}) as ws:
        ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
        assert json.loads(ws.recv(timeout=5))["conversation_initiation_metadata_event"]["conversation_id"]
        ws.send(json.dumps({"type": "user_message", "text": "Hi"}))
        kinds = {}
        while "ping" not in kinds or "audio" not in kinds:
            message = json.loads(ws.recv(timeout=5))
            kinds[message["type"]] = message
        ws.send(json.dumps({"type": "pong", "event_id": kinds["ping"]["ping_event"]["event_id"]}))
    assert kinds["agent_response"]["agent_response_event"]["agent_response"] == "You said: Hi"
