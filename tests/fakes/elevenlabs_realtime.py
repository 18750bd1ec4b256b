"""The WebSocket side of the fake ElevenLabs API (served by the same fake as
the HTTP routes, see elevenlabs_fake.py), speaking the real protocols:

- `/v1/text-to-speech/{voice_id}/stream-input`: the client opens with
  `{"text": " ", "voice_settings", "generation_config", "xi_api_key"?}`, sends
  text chunks (`try_trigger_generation`, `flush`), and ends with `{"text": ""}`.
  The server answers `{"audio": base64, "isFinal": null, "normalizedAlignment",
  "alignment"}` per generated piece, then `{"isFinal": true}`, then closes 1000.
- `/v1/text-to-speech/{voice_id}/multi-stream-input`: the same per
  `context_id` (`contextId` in answers), `close_context`, `close_socket`.
- `/v1/convai/conversation?agent_id=`: `conversation_initiation_client_data`
  → `conversation_initiation_metadata`; `user_message` → `agent_response` and
  an `audio` event; a `ping` (answered by the client's `pong`) every
  `PING_SECONDS`.
- `/v1/speech-to-text/realtime?model_id=&audio_format=&commit_strategy=`:
  `session_started` at once; `input_audio_chunk` → `partial_transcript`;
  a commit → `committed_transcript`.

The operator's key is checked in the `xi-api-key` header, else in the first
message's `xi_api_key` (stream-input only, as ElevenLabs allows); a wrong one
is closed with 1008 and ElevenLabs' error message. The voice id picks a
behaviour: `silent` sends one audio piece, then nothing (disconnect tests);
`quota-exceeded` answers the first text with ElevenLabs' error message
(`message`, `error`, `code`) and closes with 1008.

Every socket is recorded as a `Socket` in `fake.sockets`: its handshake, the
messages each way, and when it closed.
"""

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field

import tornado.websocket

from .server import Received

# Text at which the server generates without a flush: the first entry of
# ElevenLabs' default chunk_length_schedule.
DEFAULT_SCHEDULE = 120
PING_SECONDS = 0.2
CONVERSATION_ID = "conv_fake_0001"
SESSION_ID = "stt_fake_session"


def audio_piece(text):
    """Deterministic audio bytes for a piece of text (every byte value shows)."""
    from .elevenlabs_fake import audio_for

    return audio_for(text, 256 + 4 * len(text))


def alignment(text):
    chars = list(text)
    return {
        "chars": chars,
        "charStartTimesMs": [i * 50 for i in range(len(chars))],
        "charDurationsMs": [50] * len(chars),
    }


@dataclass
class Socket:
    """One WebSocket session the fake served."""

    handshake: Received
    client_messages: list = field(default_factory=list)  # parsed JSON
    server_messages: list = field(default_factory=list)
    # The code of the close frame the fake sent, else the one it received.
    close_code: int | None = None
    closed_at: float | None = None

    def wait_closed(self, timeout=5.0):
        """When the socket closed (time.monotonic()), or None if it did not in time."""
        end = time.monotonic() + timeout
        while self.closed_at is None and time.monotonic() < end:
            time.sleep(0.01)
        return self.closed_at

    def text_sent(self):
        """The text the client sent for synthesis, the opening " " left out."""
        return "".join(m.get("text") or "" for m in self.client_messages[1:] if m.get("text") != " ")


class RecordingSocket(tornado.websocket.WebSocketHandler):
    def initialize(self, fake):
        self.fake = fake
        self.socket = None
        self.authorized = False

    def check_origin(self, origin):
        return True

    def prepare(self):
        received = Received(self.request.method, self.request.path, self.request.query,
                            {k.lower(): v for k, v in self.request.headers.get_all()}, b"")
        self.socket = Socket(received)
        self.fake.received.append(received)
        self.fake.sockets.append(self.socket)
        self.authorized = self.request.headers.get("xi-api-key") == self.fake.api_key

    def open(self, *args):
        if not self.authorized and not self.key_in_first_message:
            self.refuse_key()

    # Only stream-input takes the key in its first message.
    key_in_first_message = False

    def refuse_key(self):
        self.send({"message": "Invalid API key", "error": "invalid_api_key", "code": 1008})
        self.close(1008, "Invalid API key")

    def close(self, code=None, reason=None):
        if self.socket.close_code is None:
            self.socket.close_code = code
        super().close(code, reason)

    def send(self, message):
        self.socket.server_messages.append(message)
        try:
            self.write_message(json.dumps(message))
        except tornado.websocket.WebSocketClosedError:
            pass

    def on_message(self, raw):
        message = json.loads(raw)
        self.socket.client_messages.append(message)
        if not self.authorized:
            if len(self.socket.client_messages) == 1 and message.get("xi_api_key") == self.fake.api_key:
                self.authorized = True
            else:
                return self.refuse_key()
        return self.handle(message)

    def on_close(self):
        if self.socket.close_code is None:
            self.socket.close_code = self.close_code
        self.socket.closed_at = self.socket.handshake.closed_at = time.monotonic()


class StreamInput(RecordingSocket):
    """Text to speech over one context (stream-input), or several (multi-)."""

    key_in_first_message = True

    def open(self, voice_id, multi):
        self.voice_id = voice_id
        self.multi = bool(multi)
        self.buffers = {}  # context id -> text not yet spoken
        self.schedule = DEFAULT_SCHEDULE
        super().open()

    def handle(self, message):
        context = message.get("context_id") or "default" if self.multi else None
        if self.multi and message.get("close_socket"):
            for ctx in list(self.buffers):
                self.speak(ctx, final=True)
            return self.close(1000)
        if self.multi and message.get("close_context"):
            return self.speak(context, final=True)
        text = message.get("text")
        if not isinstance(text, str):
            return
        if context not in self.buffers:  # the opening message of a context
            schedule = (message.get("generation_config") or {}).get("chunk_length_schedule")
            if schedule:
                self.schedule = schedule[0]
            self.buffers[context] = ""
            return
        if self.voice_id == "quota-exceeded":
            self.send({"message": "This request exceeds your quota of 10000.", "error": "quota_exceeded",
                       "code": 1008})
            return self.close(1008, "quota_exceeded")
        if text == "" and not self.multi:  # end of input
            self.speak(context, final=True)
            return self.close(1000)
        self.buffers[context] += text
        if message.get("flush") or len(self.buffers[context]) >= self.schedule:
            self.speak(context)

    def speak(self, context, final=False):
        text = self.buffers.get(context, "")
        if text:
            self.buffers[context] = ""
            if self.voice_id == "silent" and any("audio" in m for m in self.socket.server_messages):
                return
            message = {"audio": base64.b64encode(audio_piece(text)).decode(), "isFinal": None,
                       "normalizedAlignment": alignment(text), "alignment": alignment(text)}
            self.send({**message, "contextId": context} if self.multi else message)
        if final and self.voice_id != "silent":
            self.send({"isFinal": True, "contextId": context} if self.multi else {"isFinal": True})
            self.buffers.pop(context, None)


class Conversation(RecordingSocket):
    """A conversational AI agent: text in, text and audio out, pings."""

    def open(self):
        self.pinger = None
        self.event_id = 0
        super().open()

    def handle(self, message):
        kind = message.get("type")
        if kind == "conversation_initiation_client_data":
            self.send({"type": "conversation_initiation_metadata", "conversation_initiation_metadata_event": {
                "conversation_id": CONVERSATION_ID, "agent_output_audio_format": "pcm_16000",
                "user_input_audio_format": "pcm_16000"}})
            self.pinger = asyncio.ensure_future(self.ping())
        elif kind == "user_message":
            self.event_id += 1
            reply = "You said: " + message.get("text", "")
            self.send({"type": "agent_response", "agent_response_event": {"agent_response": reply}})
            self.send({"type": "audio", "audio_event": {"audio_base_64": base64.b64encode(audio_piece(reply)).decode(),
                                                         "event_id": self.event_id}})
        elif "user_audio_chunk" in message:
            self.send({"type": "user_transcript", "user_transcription_event": {"user_transcript": "hello"}})

    async def ping(self):
        while self.ws_connection is not None:
            await asyncio.sleep(PING_SECONDS)
            self.event_id += 1
            self.send({"type": "ping", "ping_event": {"event_id": self.event_id, "ping_ms": 5}})

    def on_close(self):
        if self.pinger is not None:
            self.pinger.cancel()
        super().on_close()


class SpeechToText(RecordingSocket):
    """Realtime transcription: partial transcripts per chunk, a committed one per commit."""

    def open(self):
        super().open()
        if self.authorized:
            self.send({"message_type": "session_started", "session_id": SESSION_ID, "config": {
                "model_id": self.get_query_argument("model_id", ""),
                "audio_format": self.get_query_argument("audio_format", "")}})
        self.chunks = 0

    def handle(self, message):
        if message.get("message_type") != "input_audio_chunk":
            return
        if message.get("audio_base_64"):
            self.chunks += 1
            self.send({"message_type": "partial_transcript", "text": f"partial {self.chunks}"})
        if message.get("commit"):
            self.send({"message_type": "committed_transcript", "text": f"heard {self.chunks} chunks"})


HANDLERS = [
    (r"/v1/text-to-speech/([^/]+)/(multi-)?stream-input", StreamInput),
    (r"/v1/convai/conversation", Conversation),
    (r"/v1/speech-to-text/realtime", SpeechToText),
]
