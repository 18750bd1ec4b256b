"""Gemini (Google AI Studio API): every path passed through, the model calls metered.

The SDK sends its key in `x-goog-api-key`; curl samples put it in `?key=`.
Kylon takes its own key from either place and never lets `key=` go upstream;
the operator's key goes in `x-goog-api-key`. The model is named in the URL
(`/v1beta/models/{model}:generateContent`), not in the body. Streams
(`:streamGenerateContent?alt=sse`) are data-only SSE with no end marker; the
last chunk carries the complete `usageMetadata`. `:countTokens`, file
uploads, model listings and calls that name no model and send no body cost
nothing; other pass-through calls with a body are estimated like any call
without figures.

This package: resumable uploads (`/upload/…`) in uploads.py, Kylon's
helpers in helpers.py (the understanding routes) and upload_urls.py, the
Live API (a WebSocket) in live.py.
"""

import re
from urllib.parse import unquote

from ...billing import Usage
from ...gates import CREDENTIALS, UNMETERED
from ...prices import table
from ..base import MAX_COPIES, MAX_TOKENS, ModelListing, Provider, Route, integer, json_or_none, member, range_problem
from . import helpers, live

_VERSION = r"/v1(?:beta|alpha)?"
# `models/{model}:{method}` anywhere in a path (tunedModels are another kind).
MODEL_CALL = re.compile(r"/models/([^/:]+):([A-Za-z]+)\Z")

# Google's canonical status names, which google-genai maps to its errors.
GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "FAILED_PRECONDITION",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def gemini_usage(body):
    """Usage of a GenerateContentResponse, of a stream chunk, or of a whole
    stream read without alt=sse (a JSON array of chunks: the last one has it)."""
    if isinstance(body, list):
        body = body[-1] if body else None
    meta = member(body, "usageMetadata")
    if not isinstance(meta, dict):
        return None
    thoughts = integer(meta, "thoughtsTokenCount")
    prompt = by_modality(meta.get("promptTokensDetails"), meta.get("toolUsePromptTokensDetails"))
    cached = by_modality(meta.get("cacheTokensDetails"))
    output = by_modality(meta.get("candidatesTokensDetails"))
    return Usage(
        # promptTokenCount already includes the cached tokens; the tools'
        # prompt (search results fed back) is input too.
        input_tokens=integer(meta, "promptTokenCount") + integer(meta, "toolUsePromptTokenCount"),
        cached_input_tokens=integer(meta, "cachedContentTokenCount"),
        audio_input_tokens=prompt.get("AUDIO", 0),
        cached_audio_input_tokens=cached.get("AUDIO", 0),
        image_input_tokens=prompt.get("IMAGE", 0),
        cached_image_input_tokens=cached.get("IMAGE", 0),
        video_input_tokens=prompt.get("VIDEO", 0),
        output_tokens=integer(meta, "candidatesTokenCount") + thoughts,
        reasoning_tokens=thoughts,
        audio_output_tokens=output.get("AUDIO", 0),
        image_output_tokens=output.get("IMAGE", 0),
        video_output_tokens=output.get("VIDEO", 0),
        tool_calls=grounding_searches(body),
    )


def by_modality(*lists):
    """{modality: tokens} of Gemini's *TokensDetails lists. DOCUMENT (PDF
    pages) counts as IMAGE, as genai-prices bills it."""
    counts = {}
    for details in lists:
        for item in details if isinstance(details, list) else ():
            tokens = integer(item, "tokenCount")
            modality = member(item, "modality")
            if tokens and isinstance(modality, str):
                modality = "IMAGE" if modality == "DOCUMENT" else modality
                counts[modality] = counts.get(modality, 0) + tokens
    return counts


def grounding_searches(body):
    """{"web_search": n} for a call grounded with Google Search, or None.
    Gemini 3 and later are billed per search query the model ran; earlier
    models per grounded prompt (one, however many queries)."""
    queries = 0
    for candidate in member(body, "candidates") or ():
        found = member(member(candidate, "groundingMetadata"), "webSearchQueries")
        queries += len(found) if isinstance(found, list) else 0
    if not queries:
        return None
    version = member(body, "modelVersion")
    if isinstance(version, str) and version.startswith(("gemini-1", "gemini-2")):
        queries = 1
    return {"web_search": queries}


def stream_event(exchange, event):
    """Every chunk may carry usageMetadata; the one with finishReason has the
    final figures. Earlier ones keep what is known (the prompt) should the
    stream be cut."""
    data = event.data
    if not data:
        return True
    exchange.output_events += 1
    if b'"usageMetadata"' in data:
        chunk = json_or_none(data)
        usage = gemini_usage(chunk) if chunk is not None else None
        if usage is not None:
            exchange.usage = usage
            exchange.usage_final = b'"finishReason"' in data
    return True


def strip_key_param(query):
    """The query string without `key=` (the client's Kylon key, never sent upstream)."""
    kept = [part for part in query.split("&") if part and unquote(part.partition("=")[0]) != "key"]
    return "&".join(kept)


class Gemini(Provider):
    name = "gemini"
    api_key_env = "GEMINI_API_KEY"
    base_url_env = "KYLON_GEMINI_BASE_URL"
    default_base_url = "https://generativelanguage.googleapis.com"
    # The SDK's header first; Bearer and x-api-key as on every route.
    client_key_headers = ("x-goog-api-key", "authorization", "x-api-key")
    passthrough = True
    upstream_id_headers = ("x-goog-request-id",)
    # Its key may come as ?key=, and Kylon's upload URLs carry a session token.
    secret_query_params = ("key", "upload_id")
    # `*` is one path segment's text (any API version, any model); docs/gates.md.
    default_gates = {
        # Ephemeral tokens for the Live API, used with Google directly.
        "/*/auth_tokens": CREDENTIALS,
        # No usage in the answer: Kylon would bill a guess from the request's size.
        "/*/models/*:predict": UNMETERED,
        "/*/models/*:predictLongRunning": UNMETERED,
        "/*/models/*:batchGenerateContent": UNMETERED,
        "/*/models/*:asyncBatchEmbedContent": UNMETERED,
        # Billed per token-hour of storage, and at creation.
        "/*/cachedContents": UNMETERED,
        "/*/interactions": UNMETERED,
        "/*/fileSearchStores": UNMETERED,
        "/upload/*/fileSearchStores": UNMETERED,
        "/*/tunedModels": UNMETERED,
        "/*/tuningJobs": UNMETERED,
    }

    routes = [
        Route(_VERSION + r"/models/[^/:]+:generateContent", "generateContent", read_usage=gemini_usage),
        Route(
            _VERSION + r"/models/[^/:]+:streamGenerateContent",
            "streamGenerateContent",
            read_usage=gemini_usage,
            on_event=stream_event,
        ),
        Route(_VERSION + r"/models/[^/:]+:countTokens", "countTokens", free=True),
        # Resumable file uploads: the start (JSON metadata) and the byte chunks.
        Route(r"/upload" + _VERSION + r"/files", "files.upload", body="raw", free=True, models=""),
        # Kylon's own helpers (the understanding routes are added per instance, below).
        Route(r"/files/upload-urls", "files.upload-urls", rewrite=helpers.check_upload_urls_request, models=""),
        # models.list (filtered by the allow-lists) and models.get.
        *ModelListing(items="models", name="name", prefix="models/", page_size="pageSize").routes(
            _VERSION + r"/models", _VERSION + r"/models/(?P<model>[^/:]+)"),
    ]

    # The Live API (client.aio.live.connect), relayed frame by frame.
    socket_routes = live.ROUTES

    # Credits per million tokens (1 credit = 1 USD), Google's paid-tier list
    # prices: kylon/prices.json, from genai-prices (tiers above 200k prompt
    # tokens, audio/image/video rates, cached audio, search grounding; the
    # -latest aliases by its match rules). Unknown models pay the dearest
    # current Gemini's price, flagged.
    prices = table("gemini")
    fallback_price = prices.fallback

    def __init__(self):
        super().__init__()
        # The understanding helpers' rewrites read this provider's settings.
        self.routes = self.routes + [
            Route(
                "/" + understanding.name, understanding.name, read_usage=gemini_usage,
                rewrite=understanding, answer=helpers.helper_answer,
            )
            for understanding in (helpers.Understanding(self), helpers.VideoAudioUnderstanding(self))
        ]

    def get_handlers(self):
        from .upload_urls import UploadUrlsHandler
        from .uploads import GeminiUploadHandler

        return [
            (r"/proxy/(gemini)(/upload/.*)", GeminiUploadHandler),
            (r"/proxy/(gemini)(/files/upload-urls)", UploadUrlsHandler),
        ]

    def configure(self, env):
        super().configure(env)
        # How long an upload session Kylon started accepts byte chunks.
        self.upload_session_seconds = float(env.get("KYLON_GEMINI_UPLOAD_SESSION_SECONDS") or 24 * 3600)
        # files/upload-urls hands out Google's own upload URLs (bytes bypass Kylon).
        self.direct_upload_urls = (env.get("KYLON_GEMINI_DIRECT_UPLOAD_URLS") or "").lower() in ("1", "true", "yes")
        # The model of the understanding helpers when the request names none.
        self.helper_model = env.get("KYLON_GEMINI_HELPER_MODEL") or "gemini-2.5-flash"

    def path_model(self, route, path):
        # `models/{model}:{method}` on any route, pass-through ones included.
        found = MODEL_CALL.search(path)
        return unquote(found.group(1)) if found else super().path_model(route, path)

    def client_key(self, request):
        key = super().client_key(request)
        if key:
            return key
        values = request.query_arguments.get("key")
        return values[0].decode("utf-8", "replace").strip() if values else None

    def upstream_query(self, query):
        return strip_key_param(query)

    def auth_headers(self):
        return {"x-goog-api-key": self.api_key}

    def error_body(self, status, message, code=None):
        error = {"code": status, "message": message, "status": GOOGLE_STATUS.get(status, "UNKNOWN")}
        if code:
            # Google's place for a machine-readable reason.
            error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": code,
                                 "domain": "kylon"}]
        return {"error": error}

    def body_problem(self, body):
        config = body.get("generationConfig")
        if config is None:
            return super().body_problem(body)
        if not isinstance(config, dict):
            return "'generationConfig' must be an object."
        for name, low, high in (("maxOutputTokens", 0, MAX_TOKENS), ("candidateCount", 1, MAX_COPIES)):
            value = config.get(name)
            if value is not None and type(value) is not int:
                return f"'generationConfig.{name}' must be an integer."
            problem = range_problem("generationConfig." + name, value, low, high)
            if problem:
                return problem
        return super().body_problem(body)

    def output_limit(self, body):
        """maxOutputTokens, for each of candidateCount answers."""
        config = body.get("generationConfig")
        if not isinstance(config, dict):
            return None
        limit, count = config.get("maxOutputTokens"), config.get("candidateCount")
        limit = limit if type(limit) is int else None
        if type(count) is not int or count <= 1:
            return limit
        return (self.default_hold_output_tokens if limit is None else limit) * count

    async def ready(self, exchange):
        # The URL says what the call is: its model, and whether it streams.
        found = MODEL_CALL.search(exchange.path)
        if found:
            exchange.model = unquote(found.group(1))
            exchange.stream = found.group(2) == "streamGenerateContent"
        if exchange.route is None and not found and not exchange.request_bytes:
            # A pass-through call that names no model and sends no body (files
            # get/list/delete, models list): nothing to bill. (Free routes:
            # countTokens, uploads, see `free` above.)
            exchange.make_free()
        return None


provider = Gemini()
