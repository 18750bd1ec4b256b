"""A fake Gemini API (generativelanguage.googleapis.com) speaking the real wire
format: generateContent, streamGenerateContent?alt=sse (data-only SSE, no end
marker: the stream ends when the connection closes; the last chunk carries
finishReason and the complete usageMetadata), countTokens, the Files API with
its resumable upload protocol (start → X-Goog-Upload-URL; chunks with
X-Goog-Upload-Command upload / upload, finalize; x-goog-upload-status active
then final; file states PROCESSING → ACTIVE), model listing, and Google's
error bodies {"error": {"code", "message", "status"}} (a bad key is 400
INVALID_ARGUMENT with reason API_KEY_INVALID).

The model name picks a behaviour:
  error-429 / error-400        answer with that error
  silent-stream                one chunk, then silence for 30 s (disconnect tests)
Usage per call: prompt 11 (4 cached), tool-use prompt 2, candidates 7, thoughts 5.

The Live API (`/ws/google.ai.generativelanguage.{v1,v1beta,v1alpha}.GenerativeService.
BidiGenerateContent`, a WebSocket; the key in `x-goog-api-key`): `setup` →
`setupComplete`; each turn (clientContent with turnComplete, realtimeInput
text, or realtimeInput audio then audioStreamEnd) is answered with
serverContent model-turn parts (text, or inline 24 kHz PCM audio when the
setup asked for AUDIO), the first carrying usageMetadata of the prompt only,
then generationComplete, then turnComplete with the turn's full
usageMetadata (prompt LIVE_PROMPT_TOKENS × the turn's number, as the
conversation grows; response LIVE_RESPONSE_TOKENS, or LIVE_AUDIO_TOKENS of
AUDIO). All server messages are binary frames of JSON, as Google's are. A
turn whose text says "expensive" has a prompt of EXPENSIVE_PROMPT_TOKENS;
one that says "hang" is never answered; "flood" is answered with FLOOD_FRAMES
frames of FLOOD_BYTES, each sent once the last is in the socket (Tornado's
write future), as fast as the reader takes them. Each session is kept in
`live_sessions` (LiveSession); `close_live()` closes them from the server side.

A test adds usage fields the real API reports only for some calls with an
`x-fake-usage` header (JSON merged into the usage object; `x-fake-response`
into the answer, `x-fake-candidate` into Gemini's candidate): see
RecordingHandler.with_test_fields.
"""

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field

import tornado.websocket

from .server import FakeServer, RecordingHandler

PROMPT_TOKENS = 11
CACHED_TOKENS = 4
TOOL_USE_PROMPT_TOKENS = 2
CANDIDATES_TOKENS = 7
THOUGHTS_TOKENS = 5
WORDS = ["Hello", " from", " the", " fake", " Gemini", "!"]
COUNT_TOKENS = 42


def usage_metadata():
    return {
        "promptTokenCount": PROMPT_TOKENS,
        "candidatesTokenCount": CANDIDATES_TOKENS,
        "toolUsePromptTokenCount": TOOL_USE_PROMPT_TOKENS,
        "thoughtsTokenCount": THOUGHTS_TOKENS,
        "cachedContentTokenCount": CACHED_TOKENS,
        "totalTokenCount": PROMPT_TOKENS + CANDIDATES_TOKENS + TOOL_USE_PROMPT_TOKENS + THOUGHTS_TOKENS,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": PROMPT_TOKENS}],
    }


def google_error(code, status, message, reason=None):
    error = {"code": code, "message": message, "status": status}
    if reason:
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com"}
        ]
    return {"error": error}


ERRORS = {
    "error-429": (429, google_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).")),
    "error-400": (400, google_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.")),
}


def rfc3339(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".000000Z"


class GeminiHandler(RecordingHandler):
    def prepare(self):
        super().prepare()
        self.set_header("Content-Type", "application/json; charset=UTF-8")

    def error(self, status, body):
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(body))

    def check_auth(self):
        if self.request.headers.get("x-goog-api-key") != self.fake.api_key or self.get_query_argument("key", None):
            self.error(400, google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                                         "API_KEY_INVALID"))
            return False
        return True


class Models(GeminiHandler):
    def get(self, version):
        if not self.check_auth():
            return
        self.finish({"models": [{"name": "models/gemini-2.5-flash", "displayName": "Gemini 2.5 Flash",
                                 "supportedGenerationMethods": ["generateContent", "countTokens"]}]})


class ModelCall(GeminiHandler):
    async def post(self, version, model, method):
        if not self.check_auth():
            return
        if model in ERRORS:
            status, body = ERRORS[model]
            return self.error(status, body)
        try:
            body = json.loads(self.request.body)
        except ValueError:
            return self.error(400, google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received."))
        if method == "countTokens":
            return self.finish({"totalTokens": COUNT_TOKENS,
                                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": COUNT_TOKENS}]})
        if method not in ("generateContent", "streamGenerateContent"):
            return self.error(404, google_error(404, "NOT_FOUND", f"Method {method} not found."))
        problem = self.fake.check_files(body)
        if problem:
            return self.error(*problem)
        if method == "generateContent":
            return self.finish(self.response(model, "".join(WORDS), final=True))
        if self.get_query_argument("alt", None) != "sse":
            # Without alt=sse Gemini streams one JSON array; the SDK always asks for SSE.
            return self.finish(json.dumps([self.response(model, "".join(WORDS), final=True)]))
        self.set_header("Content-Type", "text/event-stream")
        for i, word in enumerate(WORDS):
            last = i == len(WORDS) - 1
            self.write("data: " + json.dumps(self.response(model, word, final=last)) + "\r\n\r\n")
            try:
                await self.flush()
            except Exception:
                return
            if i == 0 and model == "silent-stream":
                await self.sleep_unless_closed(30)
                return
            if self.client_gone():
                return
        self.finish()

    def response(self, model, text, final):
        candidate = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
        if final:
            candidate["finishReason"] = "STOP"
            usage = self.with_test_fields(usage_metadata())
            candidate = self.with_test_fields(candidate, "x-fake-candidate")
        else:
            usage = {"promptTokenCount": PROMPT_TOKENS, "totalTokenCount": PROMPT_TOKENS}
        return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model,
                "responseId": "fake-response-1"}


class UploadStart(GeminiHandler):
    """POST /upload/v1beta/files: the resumable start, or (with upload_id) a chunk."""

    def post(self, version):
        upload_id = self.get_query_argument("upload_id", None)
        if upload_id is not None:
            return self.chunk(upload_id)
        if not self.check_auth():
            return
        headers = self.request.headers
        if headers.get("X-Goog-Upload-Protocol") != "resumable" or headers.get("X-Goog-Upload-Command") != "start":
            return self.error(400, google_error(400, "INVALID_ARGUMENT", "Only resumable uploads are supported."))
        try:
            size = int(headers["X-Goog-Upload-Header-Content-Length"])
        except (KeyError, ValueError):
            return self.error(400, google_error(400, "INVALID_ARGUMENT", "Missing upload content length."))
        metadata = json.loads(self.request.body or b"{}").get("file") or {}
        upload_id = "ABg" + secrets.token_urlsafe(24)
        self.fake.uploads[upload_id] = {
            "size": size,
            "mime_type": headers.get("X-Goog-Upload-Header-Content-Type") or "application/octet-stream",
            # Google's JSON takes the proto field names too (the SDK sends display_name).
            "display_name": metadata.get("displayName") or metadata.get("display_name"),
            "data": bytearray(),
        }
        url = f"{self.fake.url}/upload/{version}/files?upload_id={upload_id}&upload_protocol=resumable"
        self.set_header("X-GUploader-UploadID", upload_id)
        self.set_header("X-Goog-Upload-URL", url)
        self.set_header("X-Goog-Upload-Control-URL", url)
        self.set_header("X-Goog-Upload-Status", "active")
        self.set_header("X-Goog-Upload-Chunk-Granularity", "8388608")
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish()

    def chunk(self, upload_id):
        # The session URL is the credential: Google takes chunks without a key.
        upload = self.fake.uploads.get(upload_id)
        if upload is None:
            return self.error(404, google_error(404, "NOT_FOUND", "Upload session not found."))
        headers = self.request.headers
        command = [c.strip() for c in (headers.get("X-Goog-Upload-Command") or "").split(",")]
        offset = int(headers.get("X-Goog-Upload-Offset") or -1)
        if "upload" not in command or offset != len(upload["data"]):
            self.set_header("X-Goog-Upload-Status", "active")
            return self.error(400, google_error(400, "INVALID_ARGUMENT", "Invalid upload offset or command."))
        upload["data"] += self.request.body
        if "finalize" not in command:
            self.set_header("X-Goog-Upload-Status", "active")
            self.set_header("X-Goog-Upload-Size-Received", str(len(upload["data"])))
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            return self.finish()
        del self.fake.uploads[upload_id]
        if len(upload["data"]) != upload["size"]:
            self.set_header("X-Goog-Upload-Status", "final")
            return self.error(400, google_error(400, "INVALID_ARGUMENT", "Upload size mismatch."))
        file = self.fake.new_file(upload)
        self.set_header("X-Goog-Upload-Status", "final")
        self.finish({"file": file})


class Files(GeminiHandler):
    def get(self, version):
        if not self.check_auth():
            return
        self.finish({"files": list(self.fake.files.values())})


class File(GeminiHandler):
    def get(self, version, file_id):
        if not self.check_auth():
            return
        file = self.fake.files.get(file_id)
        if file is None:
            return self.error(403, self.fake.no_file(file_id))
        answer = dict(file)
        # Processing takes one look: the first get says PROCESSING, later ones ACTIVE.
        file["state"] = "ACTIVE"
        self.finish(answer)

    def delete(self, version, file_id):
        if not self.check_auth():
            return
        if self.fake.files.pop(file_id, None) is None:
            return self.error(403, self.fake.no_file(file_id))
        self.finish({})


class AuthTokens(GeminiHandler):
    """POST /v1alpha/auth_tokens: an ephemeral token for the Live API."""

    def post(self, version):
        if not self.check_auth():
            return
        self.finish({"name": "auth_tokens/fake-ephemeral-token"})


LIVE_PROMPT_TOKENS = 20
LIVE_RESPONSE_TOKENS = 10
LIVE_AUDIO_TOKENS = 30
EXPENSIVE_PROMPT_TOKENS = 100_000
LIVE_WORDS = ["Hello", " from", " Gemini", " Live!"]
AUDIO_CHUNK = bytes(range(256)) * 2  # 512 bytes of "PCM" per part
AUDIO_PARTS = 3
FLOOD_FRAMES = 400
FLOOD_BYTES = 256 * 1024


@dataclass
class LiveSession:
    headers: dict
    query: str
    messages: list = field(default_factory=list)  # the client's, parsed
    setup: dict | None = None
    frames_sent: int = 0
    closed_at: float | None = None
    close_code: int | None = None


class Live(tornado.websocket.WebSocketHandler):
    def initialize(self, fake):
        self.fake = fake
        self.session = None
        self.turns = 0
        self.audio_chunks = 0

    def prepare(self):
        if self.request.headers.get("x-goog-api-key") != self.fake.api_key or self.get_query_argument("key", None):
            self.set_status(400)
            self.finish(google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                                     "API_KEY_INVALID"))

    def open(self, version):
        self.session = LiveSession({k.lower(): v for k, v in self.request.headers.get_all()}, self.request.query)
        self.fake.live_sessions.append(self.session)
        self.fake.live_handlers.append(self)

    async def on_message(self, message):
        body = json.loads(message)
        self.session.messages.append(body)
        if "setup" in body:
            self.session.setup = body["setup"]
            return await self.send({"setupComplete": {}})
        content = body.get("clientContent") or body.get("client_content")
        realtime = body.get("realtimeInput") or body.get("realtime_input")
        if content is not None and content.get("turnComplete", content.get("turn_complete")):
            text = " ".join(p.get("text", "") for t in content.get("turns") or [] for p in t.get("parts") or [])
            return await self.answer(text)
        if realtime is not None:
            if realtime.get("text"):
                return await self.answer(realtime["text"])
            if realtime.get("audio") or realtime.get("mediaChunks") or realtime.get("media_chunks"):
                self.audio_chunks += 1
            if realtime.get("audioStreamEnd") or realtime.get("audio_stream_end"):
                return await self.answer("", audio_in=True)

    async def answer(self, text, audio_in=False):
        if "hang" in text:
            return
        if "flood" in text:
            part = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": "A" * FLOOD_BYTES}}
            for _ in range(FLOOD_FRAMES):
                await self.send({"serverContent": {"modelTurn": {"parts": [part]}}})
            return
        self.turns += 1
        prompt = EXPENSIVE_PROMPT_TOKENS if "expensive" in text else LIVE_PROMPT_TOKENS * self.turns
        modalities = ((self.session.setup or {}).get("generationConfig") or {}).get("responseModalities") or []
        audio_out = "AUDIO" in modalities
        if audio_out:
            parts = [{"inlineData": {"mimeType": "audio/pcm;rate=24000",
                                     "data": base64.b64encode(AUDIO_CHUNK).decode()}}] * AUDIO_PARTS
        else:
            parts = [{"text": word} for word in LIVE_WORDS]
        for i, part in enumerate(parts):
            message = {"serverContent": {"modelTurn": {"parts": [part]}}}
            if i == 0:
                message["usageMetadata"] = {"promptTokenCount": prompt, "totalTokenCount": prompt}
            await self.send(message)
        await self.send({"serverContent": {"generationComplete": True}})
        response = LIVE_AUDIO_TOKENS if audio_out else LIVE_RESPONSE_TOKENS
        await self.send({"serverContent": {"turnComplete": True}, "usageMetadata": {
            "promptTokenCount": prompt, "responseTokenCount": response, "totalTokenCount": prompt + response,
            "promptTokensDetails": [{"modality": "AUDIO" if audio_in else "TEXT", "tokenCount": prompt}],
            "responseTokensDetails": [{"modality": "AUDIO" if audio_out else "TEXT", "tokenCount": response}],
        }})

    async def send(self, message):
        self.session.frames_sent += 1
        await self.write_message(json.dumps(message).encode(), binary=True)

    def on_close(self):
        self.session.closed_at = time.monotonic()
        self.session.close_code = self.close_code


class FakeGemini(FakeServer):
    def __init__(self, api_key="AIza-operator-gemini-secret"):
        self.api_key = api_key
        self.uploads = {}  # upload id -> session
        self.files = {}  # file id -> resource
        self.file_data = {}  # file id -> the bytes uploaded
        self.live_sessions = []  # LiveSession, in the order they opened
        self.live_handlers = []
        super().__init__(
            [
                (r"/ws/google\.ai\.generativelanguage\.(v1|v1beta|v1alpha)\.GenerativeService\.BidiGenerateContent",
                 Live),
                (r"/(v1|v1beta)/models", Models),
                (r"/(v1|v1beta)/models/([^/:]+):(\w+)", ModelCall),
                (r"/upload/(v1|v1beta)/files", UploadStart),
                (r"/(v1|v1beta)/files", Files),
                (r"/(v1|v1beta)/files/([a-z0-9-]+)", File),
                # Google decodes the path: auth%5Ftokens is auth_tokens.
                (r"/(v1|v1beta|v1alpha)/auth(?:_|%5F)tokens", AuthTokens),
            ]
        )

    def reset(self):
        super().reset()
        self.live_sessions.clear()
        self.live_handlers.clear()

    def close_live(self, code=1000, reason="fake closing"):
        """Close every open Live session from the server side."""
        for handler in list(self.live_handlers):
            self.loop.call_soon_threadsafe(handler.close, code, reason)

    def wait_live_closed(self, session, timeout=5.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end and session.closed_at is None:
            time.sleep(0.01)
        return session.closed_at

    def kylon_env(self):
        return {"GEMINI_API_KEY": self.api_key, "KYLON_GEMINI_BASE_URL": self.url}

    def secrets(self):
        return {self.api_key}

    def new_file(self, upload):
        file_id = secrets.token_hex(6)
        now = time.time()
        data = bytes(upload["data"])
        file = {
            "name": f"files/{file_id}",
            "mimeType": upload["mime_type"],
            "sizeBytes": str(len(data)),
            "createTime": rfc3339(now),
            "updateTime": rfc3339(now),
            "expirationTime": rfc3339(now + 48 * 3600),
            "sha256Hash": base64.b64encode(hashlib.sha256(data).hexdigest().encode()).decode(),
            "uri": f"{self.url}/v1beta/files/{file_id}",
            "state": "PROCESSING",
            "source": "UPLOADED",
        }
        if upload["display_name"]:
            file["displayName"] = upload["display_name"]
        self.files[file_id] = file
        self.file_data[file_id] = data
        return dict(file)

    def no_file(self, file_id):
        return google_error(403, "PERMISSION_DENIED",
                            f"You do not have permission to access the File {file_id} or it may not exist.")

    def check_files(self, body):
        """A generateContent naming an uploaded file: it must exist and be ACTIVE."""
        for content in body.get("contents") or []:
            for part in content.get("parts") or []:
                uri = (part.get("fileData") or {}).get("fileUri")
                if not uri or not uri.startswith(self.url + "/"):
                    continue
                file_id = uri.rsplit("/", 1)[-1]
                file = self.files.get(file_id)
                if file is None:
                    return 403, self.no_file(file_id)
                if file["state"] != "ACTIVE":
                    return 400, google_error(400, "FAILED_PRECONDITION",
                                             f"The File {file_id} is not in an ACTIVE state and usage is not allowed.")
        return None


def start():
    return FakeGemini()
