"""ElevenLabs' WebSocket APIs, metered from their protocol (relayed by the
shared WebSocket relay, kylon/handlers/sockets.py):

- text to speech, `/v1/text-to-speech/{voice}/stream-input` and
  `multi-stream-input`: the characters of the text the client sends, as the
  HTTP routes bill them (Kylon's count, so `estimated`: ElevenLabs reports no
  cost on these sockets). The opening (and keep-alive) message `{"text": " "}`
  is not speech and not counted. The model is the URL's `model_id`.
- realtime speech to text, `/v1/speech-to-text/realtime`: seconds of audio
  sent (the bytes of each `input_audio_chunk` at the URL's `audio_format`).
- conversational AI, `/v1/convai/conversation`: seconds of session, from the
  agent's first message (ElevenLabs bills agents by the minute).

Speech to text and conversations have no shipped price, as their HTTP
routes: both stay behind the `operator:unmetered` gate, and an operator who
opens them sets a per-second price (`per_unit`) for the model
(`scribe_v2_realtime`, …; `convai` for conversations), else the fallback
price is charged and flagged.

Conversations with the SDK's `Conversation(requires_auth=True)`: the SDK asks
`get-signed-url` for a URL to connect to; Kylon answers it itself
(signed_urls.py) with a URL back to Kylon whose `conversation_signature` is a
Kylon ticket: the agent's key (by its hash), the ElevenLabs agent and an
expiry, signed with a secret derived from the operator's ElevenLabs key (so
every Kylon process sharing that key accepts it). The ticket stands in for
the key when the conversation opens (a revoked key's tickets fail with it)
and never goes upstream; the operator's key does, in `xi-api-key`.

A key the client put in a message (`xi_api_key`, `authorization`: ElevenLabs
reads them from the first message) is taken out before the message goes
upstream: the session went in with the key in its headers, and a Kylon key
never travels further.
"""

import hashlib
import hmac
import json
import time
from decimal import Decimal
from urllib.parse import parse_qs, parse_qsl, urlencode

from ...billing import Usage
from ..base import SocketRoute, json_or_none

# What ElevenLabs uses when the URL names no model.
DEFAULT_TTS_MODEL = "eleven_multilingual_v2"
DEFAULT_STT_MODEL = "scribe_v2_realtime"
CONVERSATION_MODEL = "convai"
# Fields of a message that may carry the client's key.
KEY_FIELDS = ("xi_api_key", "authorization")
# Bytes per sample of each `audio_format` family (pcm_16000: 16-bit PCM at 16 kHz).
BYTES_PER_SAMPLE = {"pcm": 2, "ulaw": 1, "alaw": 1}
SECONDS_QUANTUM = Decimal("0.001")
# The query parameter of a signed conversation URL, and how Kylon's own begin.
SIGNATURE_PARAM = "conversation_signature"
TICKET_PREFIX = "kylon1_"
# As long as ElevenLabs' own signed URLs last.
TICKET_SECONDS = 15 * 60


def query_value(exchange, name, default=""):
    values = parse_qs(exchange.query).get(name)
    return values[0] if values and values[0] else default


def without_keys(message, body):
    """The message re-encoded without the key fields of its JSON `body`, or
    None when it has none (it goes upstream as it is)."""
    if not any(name in body for name in KEY_FIELDS):
        return None
    return json.dumps({k: v for k, v in body.items() if k not in KEY_FIELDS})


def seconds(value):
    return Usage(unit="seconds", units=Decimal(value).quantize(SECONDS_QUANTUM), estimated=True)


def _ticket_mac(provider, payload):
    secret = hashlib.sha256(b"kylon conversation ticket\0" + provider.api_key.encode("utf-8")).digest()
    return hmac.new(secret, payload.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def conversation_ticket(provider, key_hash, agent_id, now=None):
    """A signed conversation URL's `conversation_signature`, for this key and agent."""
    expires = int((now or time.time()) + TICKET_SECONDS)
    payload = f"{expires}_{key_hash}"
    return f"{TICKET_PREFIX}{payload}_{_ticket_mac(provider, payload + '_' + agent_id)}"


def ticket_key_hash(provider, ticket, agent_id, now=None):
    """The hash of the key a valid, unexpired ticket for `agent_id` was issued to, else None."""
    if not provider.configured:
        return None  # no operator key, no secret: nothing Kylon signed holds
    expires, _, rest = ticket[len(TICKET_PREFIX):].partition("_")
    key_hash, _, mac = rest.partition("_")
    if not ticket.startswith(TICKET_PREFIX) or not expires.isdigit() or int(expires) < (now or time.time()):
        return None
    expected = _ticket_mac(provider, f"{expires}_{key_hash}_{agent_id}")
    return key_hash if hmac.compare_digest(mac, expected) else None


async def conversation_key(handler):
    """SocketRoute.authenticate of conversations: the key a ticket stands
    for, (None, "signed_url") for a bad ticket, None when there is no ticket
    (the session's own key, in its headers, then counts)."""
    ticket = handler.get_query_argument(SIGNATURE_PARAM, "")
    if not ticket.startswith(TICKET_PREFIX):
        return None
    key_hash = ticket_key_hash(handler.provider, ticket, handler.get_query_argument("agent_id", ""))
    if key_hash is None:
        return None, "signed_url"
    return await handler.services.cache.lookup_hash(key_hash)


def without_ticket(exchange, query):
    """A Kylon ticket never goes upstream: the operator's key authenticates there."""
    pairs = parse_qsl(query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if not (k == SIGNATURE_PARAM and v.startswith(TICKET_PREFIX))]
    return query if len(kept) == len(pairs) else urlencode(kept)


class Meter:
    """What the relay calls with every frame. `client_message` returns the
    message to send upstream instead, or None to send it as it is."""

    def __init__(self):
        self._usage = None

    def client_message(self, message):
        body = json_or_none(message)
        if body is None:
            return None
        self.read_client(body)
        return without_keys(message, body)

    def read_client(self, body):
        pass

    def upstream_message(self, message):
        pass

    def usage(self):
        return self._usage


class CharacterMeter(Meter):
    """stream-input and multi-stream-input: characters of text sent."""

    def __init__(self, exchange):
        super().__init__()
        exchange.model = query_value(exchange, "model_id", DEFAULT_TTS_MODEL)
        self.characters = 0

    def read_client(self, body):
        text = body.get("text")
        if isinstance(text, str) and text != " ":
            self.characters += len(text)
            if text:
                self._usage = Usage(unit="characters", units=Decimal(self.characters), estimated=True)


class AudioMeter(Meter):
    """Realtime speech to text: seconds of audio sent."""

    def __init__(self, exchange):
        super().__init__()
        exchange.model = query_value(exchange, "model_id", DEFAULT_STT_MODEL)
        family, _, rate = query_value(exchange, "audio_format", "pcm_16000").partition("_")
        self.bytes_per_second = BYTES_PER_SAMPLE.get(family, 2) * (int(rate) if rate.isdigit() else 16000)
        self.audio_bytes = 0

    def read_client(self, body):
        audio = body.get("audio_base_64")
        if body.get("message_type") == "input_audio_chunk" and isinstance(audio, str) and audio:
            self.audio_bytes += len(audio) * 3 // 4 - audio[-2:].count("=")
            self._usage = seconds(Decimal(self.audio_bytes) / self.bytes_per_second)


class SessionMeter(Meter):
    """Conversational AI: seconds from the agent's first message."""

    def __init__(self, exchange, clock=time.monotonic):
        super().__init__()
        exchange.model = CONVERSATION_MODEL
        self.clock = clock
        self.started_at = None

    def upstream_message(self, message):
        if self.started_at is None:
            self.started_at = self.clock()

    def usage(self):
        if self.started_at is None:
            return None
        return seconds(self.clock() - self.started_at)


ROUTES = [
    SocketRoute(r"/v1/text-to-speech/[^/]+/stream-input", "text_to_speech.stream_input", meter=CharacterMeter),
    SocketRoute(r"/v1/text-to-speech/[^/]+/multi-stream-input", "text_to_speech.multi_stream_input",
                meter=CharacterMeter),
    SocketRoute(r"/v1/speech-to-text/realtime", "speech_to_text.realtime", meter=AudioMeter),
    SocketRoute(r"/v1/convai/conversation", "convai.conversation", meter=SessionMeter,
                authenticate=conversation_key, upstream_query=without_ticket),
]
