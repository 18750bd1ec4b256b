"""Gemini's resumable uploads through Kylon, and Kylon's three Gemini helpers
(SPEC §7; the JSON of each helper is documented in docs/gemini-helpers.md).

All of them are ProxyHandler subclasses: authentication, gates, credits, the
relay and the usage record are the proxy's own.

Resumable uploads. The start (`POST /upload/v1beta/files`, with a Kylon key)
is relayed; upstream answers with the session URL in `X-Goog-Upload-URL`.
Kylon keeps that URL in an UploadSession row and hands the client a URL under
`/proxy/gemini/upload/…?upload_id=<token>` instead. The client's SDK sends the
bytes there with no key at all: the token names the session, the session the
key, and the bytes go on, opaque, to the real session URL with the operator's key.
"""

import asyncio
import base64
import binascii
import datetime
import hashlib
import json
import logging
import re
import secrets
import time

from .. import metrics, relay
from ..auth import hash_key
from ..billing import Usage, credits_for
from ..meter import settle_usage
from ..models import UploadSession, utcnow
from ..providers.base import json_or_none
from .proxy import ProxyHandler

log = logging.getLogger("kylon.gemini")

SESSION_TOKEN_PREFIX = "kus_"
SESSION_RETRY_SECONDS = 0.3

# MIME types Gemini understands (ai.google.dev: image, document, audio and
# video understanding); parameters such as `; charset=` are ignored.
IMAGE_TYPES = frozenset("image/png image/jpeg image/webp image/heic image/heif".split())
DOCUMENT_TYPES = frozenset(
    "application/pdf application/json application/rtf application/x-javascript application/x-python "
    "application/x-typescript text/plain text/html text/css text/csv text/javascript text/markdown "
    "text/rtf text/x-python text/x-typescript text/xml".split()
)
VIDEO_TYPES = frozenset(
    "video/mp4 video/mpeg video/mov video/quicktime video/avi video/x-flv video/mpg video/webm "
    "video/wmv video/x-ms-wmv video/3gpp".split()
)
AUDIO_TYPES = frozenset(
    "audio/wav audio/x-wav audio/mp3 audio/mpeg audio/aiff audio/x-aiff audio/aac audio/ogg audio/flac".split()
)
ALL_TYPES = IMAGE_TYPES | DOCUMENT_TYPES | VIDEO_TYPES | AUDIO_TYPES

MAX_UPLOAD_URLS = 20
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
# 90, "90s", "1.5s", "1:30", "01:02:03"
_SECONDS = re.compile(r"(\d+(?:\.\d+)?)s?\Z")
_CLOCK = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d+)?)\Z")


def token_hash(token):
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


# -- upload sessions (database thread) ---------------------------------------


def _save_session(digest, provider, key_hash, upstream_url, expires_at):
    now = utcnow()
    # Expired sessions go as new ones come: the table stays small.
    UploadSession.delete().where(UploadSession.expires_at < now).execute()
    UploadSession.create(
        token_hash=digest, provider=provider, key_hash=key_hash, upstream_url=upstream_url, expires_at=expires_at
    )


def _find_session(digest, provider):
    return UploadSession.get_or_none(
        (UploadSession.token_hash == digest)
        & (UploadSession.provider == provider)
        & (UploadSession.expires_at > utcnow())
    )


def _end_session(digest):
    UploadSession.delete().where(UploadSession.token_hash == digest).execute()


def _log_failure(future):
    if not future.cancelled() and future.exception() is not None:
        log.warning("upload session bookkeeping failed: %s", future.exception())


class GeminiHandler(ProxyHandler):
    """What the Gemini handlers here share: Kylon's public URL, upload sessions."""

    def kylon_base(self):
        public = self.provider.public_url
        return public or f"{self.request.protocol}://{self.request.host}"

    def new_upload_session(self, upstream_url, path):
        """Remember an upload session upstream opened for this call's key; returns
        (the URL under Kylon the client sends its bytes to, expiry, the
        database write)."""
        token = SESSION_TOKEN_PREFIX + secrets.token_urlsafe(32)
        provider = self.provider
        expires_at = utcnow() + datetime.timedelta(seconds=provider.upload_session_seconds)
        # Only keyed calls start sessions (a chunk never does).
        key_hash = hash_key(provider.client_key(self.request))
        write = self.services.db.run(_save_session, token_hash(token), provider.name, key_hash, upstream_url, expires_at)
        url = f"{self.kylon_base()}/proxy/{provider.name}{path}?upload_id={token}&upload_protocol=resumable"
        return url, expires_at, write


class GeminiUploadHandler(GeminiHandler):
    """`/proxy/gemini/upload/…`: the resumable upload protocol.

    A call with `upload_id` in its query is a chunk of a session Kylon started
    (it carries no key); any other call is an ordinary keyed call (the start)."""

    def initialize(self):
        super().initialize()
        self.session = None
        self.session_token = None
        self.refusing_chunk = False

    def send_kylon_error(self, status, message, code=None):
        self.refusing_chunk = self.session_token is not None
        super().send_kylon_error(status, message, code)

    def set_default_headers(self):
        super().set_default_headers()
        # Kylon's refusal of a chunk ends the upload: without an upload status a
        # resumable client (google-genai) would retry the same refusal.
        if getattr(self, "refusing_chunk", False):
            self.set_header("X-Goog-Upload-Status", "final")

    async def authenticate(self):
        values = self.request.query_arguments.get("upload_id")
        if not values:
            return await super().authenticate()
        self.session_token = values[0].decode("utf-8", "replace")
        session = None
        if self.session_token.startswith(SESSION_TOKEN_PREFIX):
            digest = token_hash(self.session_token)
            session = await self.services.db.run(_find_session, digest, self.provider.name)
            if session is None:
                # Another Kylon process may have handed out this URL a moment
                # ago and still be writing its session: look once more.
                await asyncio.sleep(SESSION_RETRY_SECONDS)
                session = await self.services.db.run(_find_session, digest, self.provider.name)
        if session is None:
            return None, "session"
        self.session = session
        return await self.services.cache.lookup_hash(session.key_hash)

    def reject_unauthenticated(self, reason):
        if reason != "session":
            return super().reject_unauthenticated(reason)
        metrics.child(metrics.REJECTED, self.provider.name, "key").inc()
        self.send_kylon_error(401, "Unknown or expired upload session: start the upload again through Kylon.")

    async def prepare(self):
        await super().prepare()
        if self.session is not None and not self._finished:
            self.exchange.upstream_url = self.session.upstream_url

    def upstream_headers_arrived(self, status, headers):
        if self.session is not None:
            if (headers.get("X-Goog-Upload-Status") or "").lower() == "final":
                self.services.db.run(_end_session, token_hash(self.session_token)).add_done_callback(_log_failure)
        elif status < 300 and headers.get("X-Goog-Upload-URL") and not self.client_gone:
            upstream_url = headers["X-Goog-Upload-URL"]
            url, _, write = self.new_upload_session(upstream_url, self.exchange.path)
            # Queued on the database thread before the client can see the URL,
            # so this process finds it; other processes a moment later.
            write.add_done_callback(_log_failure)
            headers["X-Goog-Upload-URL"] = url
            control = headers.get("X-Goog-Upload-Control-URL")
            if control == upstream_url:
                headers["X-Goog-Upload-Control-URL"] = url
            elif control:
                del headers["X-Goog-Upload-Control-URL"]
            # Upstream's own session id: the bytes go through Kylon's URL only.
            if "X-GUploader-UploadID" in headers:
                del headers["X-GUploader-UploadID"]
        super().upstream_headers_arrived(status, headers)


# -- the helpers ----------------------------------------------------------------


class HelperHandler(GeminiHandler):
    """A POST taking and giving Kylon's own JSON (the provider's routes say
    POST only: other methods get 405 in prepare)."""

    def read_request(self):
        """The JSON object the client sent, or None once refused with a 400."""
        try:
            request = json.loads(b"".join(self.body_chunks))
        except (ValueError, UnicodeDecodeError) as e:
            self.reject(400, f"The request body is not valid JSON: {e}")
            return None
        if not isinstance(request, dict):
            self.reject(400, "The request body must be a JSON object.")
            return None
        return request


def plain_mime_type(value):
    return value.split(";", 1)[0].strip().lower() if isinstance(value, str) else ""


class UploadUrlsHandler(HelperHandler):
    """POST /proxy/gemini/files/upload-urls: a resumable upload started per file."""

    async def forward(self):
        if self._finished:
            return
        request = self.read_request()
        if request is None:
            return
        files = request.get("files")
        problem = describe_files_problem(files)
        if problem:
            return self.reject(400, problem)
        exchange = self.exchange
        exchange.request_bytes = self.body_size
        # Starting uploads costs nothing, whatever becomes of the call.
        exchange.usage, exchange.usage_final = Usage(), True
        provider = self.provider
        answers = []
        for item in files:
            start = await self.start_upload(item)
            if start is None:
                return
            upstream_url = start.headers.get("X-Goog-Upload-URL")
            if not upstream_url:
                return self.fail(502, "The upstream started no upload session (no X-Goog-Upload-URL).")
            if provider.direct_upload_urls:
                url, expires_at = upstream_url, None
            else:
                url, expires_at, write = self.new_upload_session(upstream_url, "/upload/v1beta/files")
                await write
            answers.append(
                {
                    "display_name": item.get("display_name"),
                    "mime_type": item["mime_type"],
                    "size_bytes": item["size_bytes"],
                    "upload_url": url,
                    "upload_method": "POST",
                    "upload_headers": {"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
                    "expires_at": expires_at.isoformat() + "Z" if expires_at else None,
                }
            )
        self.write_json({"files": answers, "direct": provider.direct_upload_urls})
        self.record("completed", 200, Usage())

    async def start_upload(self, item):
        """One resumable start upstream; the call, or None once answered."""
        provider = self.provider
        metadata = {"file": {"mimeType": item["mime_type"], "sizeBytes": str(item["size_bytes"])}}
        if item.get("display_name"):
            metadata["file"]["displayName"] = item["display_name"]
        headers = {
            **provider.auth_headers(),
            "Content-Type": "application/json",
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(item["size_bytes"]),
            "X-Goog-Upload-Header-Content-Type": item["mime_type"],
        }
        answer = BufferedAnswer()
        outcome = await self.call_upstream(
            "POST",
            provider.base_url + "/upload/v1beta/files",
            headers,
            json.dumps(metadata).encode("utf-8"),
            answer.headers_arrived,
            answer.chunks.append,
        )
        if self.first_byte_at is None and answer.headers is not None:
            self.first_byte_at = time.monotonic()
        if outcome != relay.COMPLETED or self.client_gone or self.interrupted:
            self.finish_call(outcome)  # time-out, unreachable, disconnect, shutdown
            return None
        status = self.call.status
        if status < 400:
            return answer
        # Gemini's own error, as Gemini said it.
        kind = "http_4xx" if status < 500 else "http_5xx"
        metrics.child(metrics.UPSTREAM_ERRORS, provider.name, self.route_name, kind).inc()
        self.set_status(status)
        self.set_header("Content-Type", answer.headers.get("Content-Type") or "application/json")
        self.finish(b"".join(answer.chunks))
        self.record("upstream_error", status, Usage(), error=f"upstream answered {status}")
        return None

    def fail(self, status, message):
        self.send_kylon_error(status, message)
        self.record("error", status, Usage(), error=message)


class BufferedAnswer:
    """An upstream answer kept whole (small answers only: the helpers' own calls)."""

    def __init__(self):
        self.status = None
        self.headers = None
        self.chunks = []

    def headers_arrived(self, status, headers):
        self.status, self.headers = status, headers


def describe_files_problem(files):
    if not isinstance(files, list) or not files:
        return "'files' is required: a list of {display_name, mime_type, size_bytes}."
    if len(files) > MAX_UPLOAD_URLS:
        return f"At most {MAX_UPLOAD_URLS} files per call."
    for i, item in enumerate(files):
        where = f"files[{i}]"
        if not isinstance(item, dict):
            return f"{where} must be an object {{display_name, mime_type, size_bytes}}."
        name = item.get("display_name")
        if name is not None and (not isinstance(name, str) or len(name) > 512):
            return f"{where}.display_name must be a string of at most 512 characters."
        mime = plain_mime_type(item.get("mime_type"))
        if not mime:
            return f"{where}.mime_type is required."
        if mime not in ALL_TYPES:
            return f"{where}.mime_type '{item['mime_type']}' is not a type Gemini understands."
        item["mime_type"] = mime
        size = item.get("size_bytes")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            return f"{where}.size_bytes must be a positive integer."
    return None


class UnderstandingHandler(HelperHandler):
    """A file and a prompt in, the answer's text out: a generateContent call
    upstream, relayed, metered and billed by the proxy machinery, whose
    answer is turned into Kylon's JSON at the end."""

    kind = "file"
    mime_types = ALL_TYPES

    def initialize(self):
        super().initialize()
        self.answer = BufferedAnswer()

    async def forward(self):
        if self._finished:
            return
        request = self.read_request()
        if request is None:
            return
        try:
            model, generate = self.build(request)
        except ValueError as e:
            return self.reject(400, str(e))
        exchange = self.exchange
        exchange.path = f"/v1beta/models/{model}:generateContent"
        exchange.query = ""
        self.body_chunks = [json.dumps(generate).encode("utf-8")]
        await super().forward()

    def build(self, request):
        """(model, generateContent body) for a helper request; ValueError says what is wrong."""
        model = request.get("model", self.provider.helper_model)
        if not isinstance(model, str) or not _MODEL_NAME.match(model.removeprefix("models/")):
            raise ValueError("'model' must be a Gemini model name such as 'gemini-2.5-flash'.")
        prompt = request.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("'prompt' is required: what to ask about the file.")
        media, mime = self.media_part(request)
        prompt = self.add_options(request, media, mime, prompt)
        generate = {"contents": [{"role": "user", "parts": [media, {"text": prompt}]}]}
        system = request.get("system_instruction")
        if system is not None:
            if not isinstance(system, str):
                raise ValueError("'system_instruction' must be a string.")
            generate["systemInstruction"] = {"parts": [{"text": system}]}
        config = {}
        max_tokens = request.get("max_output_tokens")
        if max_tokens is not None:
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
                raise ValueError("'max_output_tokens' must be a positive integer.")
            config["maxOutputTokens"] = max_tokens
        temperature = request.get("temperature")
        if temperature is not None:
            if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
                raise ValueError("'temperature' must be a number from 0 to 2.")
            config["temperature"] = temperature
        config.update(self.generation_options(request))
        if config:
            generate["generationConfig"] = config
        return model.removeprefix("models/"), generate

    def media_part(self, request):
        file_uri = request.get("file_uri")
        inline = request.get("inline_data")
        if (file_uri is None) == (inline is None):
            raise ValueError(
                f"Give the {self.kind} as 'file_uri' (with 'mime_type') or as 'inline_data' "
                "{mime_type, data (base64)}, not both."
            )
        if file_uri is not None:
            if not isinstance(file_uri, str) or not file_uri.startswith(("https://", "http://", "gs://")):
                raise ValueError("'file_uri' must be the URI of an uploaded file (its 'uri' field).")
            mime = self.check_mime(request.get("mime_type"), "'mime_type'")
            return {"fileData": {"fileUri": file_uri, "mimeType": mime}}, mime
        if not isinstance(inline, dict):
            raise ValueError("'inline_data' must be an object {mime_type, data}.")
        mime = self.check_mime(inline.get("mime_type"), "'inline_data.mime_type'")
        data = inline.get("data")
        if not isinstance(data, str) or not data:
            raise ValueError("'inline_data.data' is required: the file's bytes in base64.")
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("'inline_data.data' is not valid base64.") from None
        return {"inlineData": {"mimeType": mime, "data": data}}, mime

    def check_mime(self, value, name):
        mime = plain_mime_type(value)
        if not mime:
            raise ValueError(f"{name} is required (for example 'application/pdf').")
        if mime not in self.mime_types:
            raise ValueError(
                f"Unsupported MIME type '{value}' for {self.route_name}; supported: {', '.join(sorted(self.mime_types))}."
            )
        return mime

    def add_options(self, request, media, mime, prompt):
        return prompt

    def generation_options(self, request):
        return {}

    # -- the answer: kept, then turned into Kylon's JSON -----------------------
    def upstream_headers_arrived(self, status, headers):
        self.first_byte_at = time.monotonic()
        self.exchange.response_headers = headers
        self.meter.on_headers(status, headers)
        self.answer.headers_arrived(status, headers)

    def upstream_chunk(self, chunk):
        self.answer.chunks.append(self.meter.feed(chunk))

    def finish_call(self, outcome):
        if outcome != relay.COMPLETED or self.client_gone or self.interrupted:
            return super().finish_call(outcome)
        self.meter.close()
        status = self.call.status or 0
        body = b"".join(self.answer.chunks)
        if status >= 400:
            # Gemini's own error (bad file URI, quota…), passed through.
            kind = "http_4xx" if status < 500 else "http_5xx"
            metrics.child(metrics.UPSTREAM_ERRORS, self.provider.name, self.route_name, kind).inc()
            self.set_status(status)
            self.set_header("Content-Type", self.answer.headers.get("Content-Type") or "application/json")
            self.finish(body)
            self.record("upstream_error", status, Usage(), error=f"upstream answered {status}")
            return
        exchange = self.exchange
        usage = settle_usage(exchange, finished=True)
        answer = json_or_none(body)
        if answer is None:
            message = "The upstream answer was not a JSON object."
            self.send_kylon_error(502, message)
            self.record("error", 502, usage, error=message)
            return
        price, _ = self.services.pricebook.price(self.provider.name, exchange.model)
        text, finish_reason = answer_text(answer)
        self.write_json(
            {
                "text": text,
                "model": exchange.model,
                "finish_reason": finish_reason,
                "usage": {
                    "input_tokens": usage.input_tokens,
                    "cached_input_tokens": usage.cached_input_tokens,
                    "output_tokens": usage.output_tokens,
                    "reasoning_tokens": usage.reasoning_tokens,
                    "estimated": usage.estimated,
                    "credits": str(credits_for(usage, price)),
                },
            }
        )
        self.record("completed", status, usage)


def answer_text(answer):
    """(text of the first candidate without its thoughts, finish or block reason)."""
    candidates = answer.get("candidates")
    if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
        feedback = answer.get("promptFeedback")
        return "", feedback.get("blockReason") if isinstance(feedback, dict) else None
    first = candidates[0]
    content = first.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    texts = []
    for part in parts if isinstance(parts, list) else ():
        if isinstance(part, dict) and isinstance(part.get("text"), str) and not part.get("thought"):
            texts.append(part["text"])
    return "".join(texts), first.get("finishReason")


def seconds(value, name):
    """A clip offset given as seconds (90, "90s") or a clock ("1:30", "01:02:03")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        found = _SECONDS.match(text)
        if found:
            return float(found.group(1))
        found = _CLOCK.match(text)
        if found:
            hours, minutes, secs = found.groups()
            return int(hours or 0) * 3600 + int(minutes) * 60 + float(secs)
    raise ValueError(f"'{name}' must be seconds (90, \"90s\") or a time (\"1:30\", \"01:02:03\").")


def duration(value):
    """Seconds as a protobuf Duration string ("90s", "1.5s")."""
    return f"{value:g}s"


def clock(value):
    whole = int(value)
    return f"{whole // 60:02d}:{whole % 60:02d}"


class VideoAudioHandler(UnderstandingHandler):
    """Video and audio, with a clip (start/end offsets), frame rate and media resolution."""

    kind = "video or audio"
    mime_types = VIDEO_TYPES | AUDIO_TYPES
    resolutions = {"low": "MEDIA_RESOLUTION_LOW", "medium": "MEDIA_RESOLUTION_MEDIUM", "high": "MEDIA_RESOLUTION_HIGH"}

    def add_options(self, request, media, mime, prompt):
        start = request.get("start_offset")
        end = request.get("end_offset")
        fps = request.get("fps")
        start_s = None if start is None else seconds(start, "start_offset")
        end_s = None if end is None else seconds(end, "end_offset")
        if start_s is not None and end_s is not None and end_s <= start_s:
            raise ValueError("'end_offset' must come after 'start_offset'.")
        if fps is not None and (
            not isinstance(fps, (int, float)) or isinstance(fps, bool) or not 0 < fps <= 24
        ):
            raise ValueError("'fps' must be a number above 0 and at most 24.")
        if mime in VIDEO_TYPES:
            metadata = {}
            if start_s is not None:
                metadata["startOffset"] = duration(start_s)
            if end_s is not None:
                metadata["endOffset"] = duration(end_s)
            if fps is not None:
                metadata["fps"] = fps
            if metadata:
                media["videoMetadata"] = metadata
            return prompt
        if fps is not None:
            raise ValueError("'fps' applies to video only.")
        # Gemini clips audio by timestamps named in the prompt (MM:SS).
        if start_s is not None or end_s is not None:
            span = f"from {clock(start_s or 0)}" + (f" to {clock(end_s)}" if end_s is not None else " to the end")
            prompt = f"Consider only the part of the audio {span}.\n\n{prompt}"
        return prompt

    def generation_options(self, request):
        resolution = request.get("media_resolution")
        if resolution is None:
            return {}
        if resolution not in self.resolutions:
            raise ValueError("'media_resolution' must be 'low', 'medium' or 'high'.")
        return {"mediaResolution": self.resolutions[resolution]}


# Matched before the generic proxy route (app.py lists this module first).
default_handlers = [
    (r"/proxy/(gemini)(/upload/.*)", GeminiUploadHandler),
    (r"/proxy/(gemini)(/files/upload-urls)", UploadUrlsHandler),
    (r"/proxy/(gemini)(/file-understanding)", UnderstandingHandler),
    (r"/proxy/(gemini)(/video-audio-understanding)", VideoAudioHandler),
]
