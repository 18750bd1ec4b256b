"""ElevenLabs: text to speech (binary audio, plain or streamed) and every other
path passed through, all behind the `elevenlabs` skill.

The SDK sends its key in `xi-api-key`; Kylon takes its own key from there and
sends the operator's in the same header. Text to speech is billed by
characters: the `character-cost` response header when ElevenLabs sends it (on
any path), else Kylon counts the characters of the request's `text` (marked
estimated: it is Kylon's count, not ElevenLabs' figure). Reads (voices, models,
user) cost nothing. Audio is relayed as opaque bytes as it arrives. The
realtime WebSockets and their meters are in realtime.py.
"""

from decimal import Decimal

from ...billing import Usage
from ...prices import table
from ...errors import error_code
from ...gates import CREDENTIALS, UNMETERED
from . import realtime
from ..base import Provider, Route

# What ElevenLabs uses when the request names no model.
DEFAULT_MODEL = "eleven_multilingual_v2"


def read_tts_request(exchange, body):
    """ElevenLabs names the model `model_id`; the request itself is left as is.
    Whether it streams is the path's business, not a body field."""
    model = body.get("model_id")
    exchange.model = model if isinstance(model, str) and model else DEFAULT_MODEL
    exchange.stream = False
    return False


def read_tts_stream_request(exchange, body):
    read_tts_request(exchange, body)
    exchange.stream = True
    return False


def characters(count, estimated=False):
    return Usage(unit="characters", units=Decimal(count), estimated=estimated)


def tts_hold(exchange):
    """Text to speech costs its text's characters: that is what a call holds."""
    text = (exchange.request_json or {}).get("text")
    return characters(len(text) if isinstance(text, str) else 0)


class ElevenLabs(Provider):
    name = "elevenlabs"
    api_key_env = "ELEVENLABS_API_KEY"
    base_url_env = "KYLON_ELEVENLABS_BASE_URL"
    default_base_url = "https://api.elevenlabs.io"
    # The SDK's header first; a Bearer token is what its async token hook sends.
    client_key_headers = ("xi-api-key", "authorization", "x-api-key")
    passthrough = True
    # The provider needs its skill; the ways around the meter need the
    # operator's reserved skills (docs/gates.md says why, path by path).
    default_gates = {
        "": "elevenlabs",
        # Tokens and signed URLs the client then uses with ElevenLabs directly.
        "/v1/single-use-token": CREDENTIALS,
        "/v1/convai/conversation/token": CREDENTIALS,
        "/v1/convai/realtime/client_secrets": CREDENTIALS,
        # API keys of service accounts; members, invites and keys of the workspace.
        "/v1/service-accounts": CREDENTIALS,
        "/v1/workspace": CREDENTIALS,
        "/v1/workspaces": CREDENTIALS,
        # Billed by ElevenLabs without a `character-cost` header: Kylon would charge nothing.
        "/v1/speech-to-text": UNMETERED,
        "/v1/sound-generation": UNMETERED,
        "/v1/music": UNMETERED,
        "/v1/dubbing": UNMETERED,
        "/v1/speech-to-speech": UNMETERED,
        "/v1/voice-changer": UNMETERED,
        "/v1/audio-isolation": UNMETERED,
        "/v1/text-to-voice": UNMETERED,
        "/v1/forced-alignment": UNMETERED,
        "/v1/studio": UNMETERED,
        "/v1/projects": UNMETERED,
        "/v1/audio-native": UNMETERED,
        "/v1/flows": UNMETERED,
        "/v1/productions": UNMETERED,
        # Conversational agents run (and are billed per minute) on ElevenLabs' side.
        "/v1/convai": UNMETERED,
    }
    # Kylon answers get-signed-url itself now, with a URL back to Kylon
    # (signed_urls.py): no credential of the operator's is handed out there.
    retired_gates = {
        "/v1/convai/conversation/get-signed-url": CREDENTIALS,
        "/v1/convai/conversation/get_signed_url": CREDENTIALS,
    }
    # Kylon's own tickets in signed conversation URLs: never in the access log.
    secret_query_params = ("conversation_signature",)
    upstream_id_headers = ("request-id",)

    routes = [
        # Binary audio/mpeg, or JSON with /with-timestamps.
        Route(r"/v1/text-to-speech/[^/]+(/with-timestamps)?", "text_to_speech", rewrite=read_tts_request,
              hold=tts_hold),
        # Chunked audio (not SSE), or NDJSON with /with-timestamps.
        Route(r"/v1/text-to-speech/[^/]+/stream(/with-timestamps)?", "text_to_speech.stream",
              rewrite=read_tts_stream_request, hold=tts_hold),
    ]

    # Realtime text to speech, speech to text and conversations (WebSockets).
    socket_routes = realtime.ROUTES

    # Credits per character (1 credit = 1 USD): Kylon's own entries in
    # kylon/prices.json (ElevenLabs' Creator-plan rate, see scripts/update_prices.py).
    # Unknown models (and pass-through paths that report a character cost) pay
    # the dearest rate, flagged.
    prices = table("elevenlabs")
    fallback_price = prices.fallback

    def get_handlers(self):
        from .signed_urls import ConversationUrlHandler

        return [(r"/proxy/(elevenlabs)(/v1/convai/conversation/get[-_]signed[-_]url)", ConversationUrlHandler)]

    def auth_headers(self):
        return {"xi-api-key": self.api_key}

    def error_body(self, status, message, code=None):
        # ElevenLabs' own shape: {"detail": {"status": code, "message": …}}.
        return {"detail": {"status": code or error_code(status), "message": message}}

    def usage_from_headers(self, exchange, headers):
        # Final as soon as the headers are in: a stream cut later was still
        # billed by ElevenLabs for its whole text.
        exchange.usage_final = True
        cost = (headers.get("character-cost") or "").strip()
        if cost.isdigit():
            return characters(int(cost))
        text = (exchange.request_json or {}).get("text")
        if exchange.route is not None and isinstance(text, str):
            return characters(len(text), estimated=True)
        return Usage()


provider = ElevenLabs()
