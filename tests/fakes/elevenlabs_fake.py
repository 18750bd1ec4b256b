"""A fake ElevenLabs API speaking the real wire format: text to speech as
binary audio/mpeg (plain, with `request-id` and `character-cost` headers) or a
chunked audio stream (`/stream`, no cost header: whether ElevenLabs sends one
there is unverified), the JSON `/with-timestamps` variant, `GET /v1/voices`,
`GET /v1/models` (a bare array), history (list and delete, for pass-through),
text to dialogue, the realtime WebSockets (elevenlabs_realtime.py), and ElevenLabs' error bodies `{"detail":{"status","message"}}`
(422 validation errors: `{"detail":[{loc,msg,type}]}`).

The voice id picks a behaviour, so a test needs no set-up calls:
  error-401 / error-422 / error-429   answer with that error (429 is `system_busy`)
  held       one audio chunk, then waits for `fake.release` before the rest
  silent     one audio chunk, then silence for 30 s (a disconnect test)
Anything else answers normally.

The `character-cost` it reports is its own count (whitespace runs collapsed),
so a test can tell ElevenLabs' figure from Kylon's own count of `text`.
"""

import asyncio
import base64
import hashlib
import json
import threading

from . import elevenlabs_realtime
from .server import FakeServer, RecordingHandler

CHUNK = 4096
CHUNKS = 3


def character_cost(text):
    return len(" ".join(text.split()))


def audio_for(text, size=CHUNK * CHUNKS):
    """Deterministic 'MP3' bytes for a text: an ID3 tag, then every byte value
    (CR, LF and NUL included) so any mangling on the way shows."""
    seed = hashlib.sha256(text.encode("utf-8")).digest()
    body = bytearray(b"ID3\x04\x00\x00\x00\x00\x00\x00")
    while len(body) < size:
        body += bytes(range(256)) + seed
    return bytes(body[:size])


def detail(status, message):
    return {"detail": {"status": status, "message": message}}


ERRORS = {
    "error-401": (401, detail("invalid_api_key", "Invalid API key")),
    "error-429": (429, detail("system_busy", "We are experiencing heavy traffic, please try again later.")),
    "error-422": (422, {"detail": [{"loc": ["body", "text"], "msg": "field required", "type": "value_error.missing"}]}),
}

VOICES = [
    {"voice_id": "21m00Tcm4TlvDq8ikWAM", "name": "Rachel", "category": "premade", "labels": {"accent": "american"}},
    {"voice_id": "JBFqnCBsd6RMkjVDRZzb", "name": "George", "category": "premade", "labels": {"accent": "british"}},
]

MODELS = [
    {"model_id": "eleven_multilingual_v2", "name": "Eleven Multilingual v2", "can_do_text_to_speech": True},
    {"model_id": "eleven_flash_v2_5", "name": "Eleven Flash v2.5", "can_do_text_to_speech": True},
]


class ElevenLabsHandler(RecordingHandler):
    def prepare(self):
        super().prepare()
        if self.request.headers.get("xi-api-key") != self.fake.api_key:
            self.answer_error(401, detail("invalid_api_key", "Invalid API key"))

    def answer_error(self, status, body):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("request-id", "fake-error-request")
        self.finish(json.dumps(body))

    def text(self):
        return json.loads(self.request.body or b"{}").get("text", "")


class TextToSpeech(ElevenLabsHandler):
    async def post(self, voice_id, stream, timestamps):
        if voice_id in ERRORS:
            return self.answer_error(*ERRORS[voice_id])
        text = self.text()
        audio = audio_for(text)
        self.set_header("request-id", "fake-tts-request")
        if timestamps:
            chars = list(text)
            alignment = {
                "characters": chars,
                "character_start_times_seconds": [i * 0.1 for i in range(len(chars))],
                "character_end_times_seconds": [(i + 1) * 0.1 for i in range(len(chars))],
            }
            self.set_header("character-cost", str(character_cost(text)))
            self.set_header("Content-Type", "application/json")
            body = {"audio_base64": base64.b64encode(audio).decode(), "alignment": alignment,
                    "normalized_alignment": alignment}
            return self.finish(json.dumps(body))
        self.set_header("Content-Type", "audio/mpeg")
        if not stream:
            self.set_header("character-cost", str(character_cost(text)))
            return self.finish(audio)
        for i in range(CHUNKS):
            if self.client_gone():
                return
            self.write(audio[i * CHUNK : (i + 1) * CHUNK])
            try:
                await self.flush()
            except Exception:
                return
            if i == 0 and voice_id == "silent":
                return await self.sleep_unless_closed(30)
            if i == 0 and voice_id == "held":
                while not self.fake.release.is_set() and not self.client_gone():
                    await asyncio.sleep(0.01)
        self.finish()


class Voices(ElevenLabsHandler):
    def get(self):
        self.finish({"voices": VOICES, "has_more": False, "total_count": len(VOICES)})


class Models(ElevenLabsHandler):
    def get(self):
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(MODELS))


class History(ElevenLabsHandler):
    def get(self):
        self.finish({"history": [], "has_more": False, "last_history_item_id": None})


class HistoryItem(ElevenLabsHandler):
    def delete(self, item_id):
        self.finish({"status": "ok"})


class TextToDialogue(ElevenLabsHandler):
    def post(self):
        inputs = json.loads(self.request.body or b"{}").get("inputs", [])
        text = "".join(i.get("text", "") for i in inputs)
        self.set_header("Content-Type", "audio/mpeg")
        self.set_header("character-cost", str(character_cost(text)))
        self.finish(audio_for(text, CHUNK))


class SingleUseToken(ElevenLabsHandler):
    def post(self, token_type):
        self.finish({"token": f"sutkn_fake_{token_type}"})


class SignedUrl(ElevenLabsHandler):
    def get(self, spelling):
        self.finish({"signed_url": "wss://api.elevenlabs.io/v1/convai/conversation?conversation_signature=fake"})


class ConversationToken(ElevenLabsHandler):
    def get(self):
        self.finish({"token": "fake-webrtc-token"})


class FakeElevenLabs(FakeServer):
    def __init__(self, api_key="sk_operator_elevenlabs_secret"):
        self.api_key = api_key
        self.release = threading.Event()
        # WebSocket sessions (elevenlabs_realtime.Socket), oldest first.
        self.sockets = []
        super().__init__(
            elevenlabs_realtime.HANDLERS
            + [
                (r"/v1/text-to-speech/([^/]+)(/stream)?(/with-timestamps)?", TextToSpeech),
                (r"/v1/voices", Voices),
                (r"/v1/models", Models),
                (r"/v1/history", History),
                (r"/v1/history/([^/]+)", HistoryItem),
                (r"/v1/text-to-dialogue", TextToDialogue),
                # Paths that mint credentials (closed by Kylon's default gates).
                (r"/v1/single-use-token/([^/]+)", SingleUseToken),
                (r"/v1/convai/conversation/(get-signed-url|get_signed_url)", SignedUrl),
                (r"/v1/convai/conversation/token", ConversationToken),
            ]
        )

    def kylon_env(self):
        return {"ELEVENLABS_API_KEY": self.api_key, "KYLON_ELEVENLABS_BASE_URL": self.url}

    def secrets(self):
        return {self.api_key}

    def reset(self):
        super().reset()
        self.sockets.clear()

    def last_socket(self):
        return self.sockets[-1]


def start():
    return FakeElevenLabs()
