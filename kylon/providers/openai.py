"""OpenAI: chat completions, the Responses API, images and the model list.

Chat-completion streams report usage only when asked
(`stream_options.include_usage`); Kylon always asks, and keeps the extra usage
chunk from a client that did not. Responses streams end with
`response.completed` (or `.failed` / `.incomplete`) carrying the usage. A
response's id is bound to the agent that created it, and a background
response is billed once from its final usage: kylon/responses.py.

Images (generations, edits) are billed as the Images section below says.
"""

import math
import re
from decimal import Decimal

from ..billing import Usage
from ..prices import table
from .base import MAX_COPIES, MAX_TOKENS, ModelListing, Provider, Route, error_message, integer, json_or_none, member

# Chat chunks carry `"usage":null` on every event once usage is requested; only
# a chunk with a real usage object needs parsing.
_USAGE_NULL = re.compile(rb'"usage"\s*:\s*null')


def chat_usage(body):
    """Usage of a chat.completion (or a usage chunk)."""
    usage = member(body, "usage")
    if not isinstance(usage, dict):
        return None
    return Usage(
        input_tokens=integer(usage, "prompt_tokens"),
        cached_input_tokens=integer(usage, "prompt_tokens_details", "cached_tokens"),
        cache_write_tokens=integer(usage, "prompt_tokens_details", "cache_write_tokens"),
        audio_input_tokens=integer(usage, "prompt_tokens_details", "audio_tokens"),
        output_tokens=integer(usage, "completion_tokens"),
        reasoning_tokens=integer(usage, "completion_tokens_details", "reasoning_tokens"),
        audio_output_tokens=integer(usage, "completion_tokens_details", "audio_tokens"),
        service_tier=text(body, "service_tier"),
    )


def text(body, key):
    """body[key] when it is a string (the service tier OpenAI answers with), else ""."""
    value = body.get(key)
    return value if isinstance(value, str) else ""


def ask_for_stream_usage(exchange, body):
    """Make sure a chat stream ends with a usage chunk."""
    if body.get("stream") is not True:
        return False
    options = body.get("stream_options")
    if not isinstance(options, dict):
        options = {}
    if options.get("include_usage") is True:
        return False
    options["include_usage"] = True
    body["stream_options"] = options
    exchange.hide_usage_chunk = True
    return True


def chat_event(exchange, event):
    """Reads usage from chat-completion chunks; also serves Cerebras and
    OpenRouter, whose streams have the same shape."""
    data = event.data
    if data is None:
        return True
    if data == b"[DONE]":
        exchange.stream_done = True
        return True
    if b'"usage"' in data and not _USAGE_NULL.search(data):
        chunk = json_or_none(data)
        if chunk is not None:
            usage = chat_usage(chunk)
            if usage is not None:
                exchange.usage = usage
                exchange.usage_final = True
                if exchange.hide_usage_chunk and not chunk.get("choices"):
                    return False
    if b'"error":' in data:
        # A quote inside JSON text is escaped, so this is a real key: a
        # mid-stream error chunk (OpenAI, OpenRouter, Cerebras).
        chunk = json_or_none(data)
        if chunk is not None and chunk.get("error"):
            exchange.stream_error = error_message(chunk)
    exchange.output_events += 1
    return True


def chat_completions_route():
    """POST /v1/chat/completions as OpenAI defines it (Cerebras serves the same)."""
    return Route(
        r"/v1/chat/completions",
        "chat.completions",
        read_usage=chat_usage,
        on_event=chat_event,
        rewrite=ask_for_stream_usage,
    )


def model_routes():
    """GET /v1/models and /v1/models/{id}, free, filtered by the allow-lists
    (OpenAI's shape: {"object": "list", "data": [{"id": …}]}; Cerebras too)."""
    return ModelListing().routes(r"/v1/models", r"/v1/models/(?P<model>[^/]+)")


def responses_usage(body):
    usage = member(body, "usage")
    if not isinstance(usage, dict):
        return None
    return Usage(
        input_tokens=integer(usage, "input_tokens"),
        cached_input_tokens=integer(usage, "input_tokens_details", "cached_tokens"),
        cache_write_tokens=integer(usage, "input_tokens_details", "cache_write_tokens"),
        output_tokens=integer(usage, "output_tokens"),
        reasoning_tokens=integer(usage, "output_tokens_details", "reasoning_tokens"),
        tool_calls=response_tool_calls(body.get("output")),
        service_tier=text(body, "service_tier"),
    )


# Responses output items that OpenAI bills per call, by Kylon's tool name.
_BILLED_CALLS = {"web_search_call": "web_search", "file_search_call": "file_search"}


def response_tool_calls(output):
    """{tool: calls} of a response's web and file search calls, or None."""
    calls = None
    if isinstance(output, list):
        for item in output:
            name = _BILLED_CALLS.get(item.get("type")) if isinstance(item, dict) else None
            if name is not None:
                calls = calls or {}
                calls[name] = calls.get(name, 0) + 1
    return calls


_RESPONSE_FINAL = (b"response.completed", b"response.failed", b"response.incomplete")
# The events whose `response` says which response this is and its status.
_RESPONSE_EVENTS = (b"response.created", b"response.queued", b"response.in_progress") + _RESPONSE_FINAL


def note_response(exchange, body):
    """What an answer (or a stream event) shows of the response it carries:
    its id, status and usage, kept for kylon/responses.py (binding, and the
    one charge of a background response)."""
    if not isinstance(body, dict):
        return
    response_id, status = body.get("id"), body.get("status")
    if isinstance(response_id, str) and response_id:
        exchange.object_id = response_id
    if isinstance(status, str):
        exchange.object_status = status
    usage = responses_usage(body)
    if usage is not None:
        exchange.object_usage = usage


def responses_event(exchange, event):
    name = event.name
    if name.endswith(b".delta"):
        exchange.output_events += 1
    elif name in _RESPONSE_EVENTS or (not name and event.data and b'"response.' in event.data):
        payload = json_or_none(event.data or b"")
        if payload is not None and isinstance(payload.get("response"), dict):
            note_response(exchange, payload["response"])
            usage = exchange.object_usage
            # A free route (a resumed stream of a stored response) bills nothing itself.
            if usage is not None and not exchange.route.free:
                exchange.usage = usage
                exchange.usage_final = True
            if name == b"response.failed":
                exchange.stream_error = error_message(payload["response"]) or "response.failed"
    elif name == b"error":
        # Two shapes are seen: code/message at the top, or nested under "error".
        exchange.stream_error = error_message(json_or_none(event.data or b"")) or "error event"
    return True


def read_responses_request(exchange, body):
    """A Responses create (or input-token count, compaction): whether it runs in
    the background, is stored, and which earlier response it builds on."""
    exchange.background = body.get("background") is True
    exchange.stored = body.get("store") is not False
    previous = body.get("previous_response_id")
    if isinstance(previous, str) and previous:
        exchange.named_object = previous
    return False


# A stored response's own paths: /v1/responses/{response_id}[/…].
_RESPONSE_ID = r"/v1/responses/([^/]+)"


def responses_routes():
    """The Responses API's routes (kylon/responses.py keeps each response's owner
    and bills a background response once, from its final usage)."""
    return [
        Route(r"/v1/responses", "responses", read_usage=responses_usage, read_answer=note_response,
              on_event=responses_event, rewrite=read_responses_request, lifecycle="create"),
        # Named before the stored-response paths their names would match.
        Route(r"/v1/responses/input_tokens", "responses.input_tokens", free=True, rewrite=read_responses_request,
              lifecycle="refer"),
        Route(r"/v1/responses/compact", "responses.compact", read_usage=responses_usage,
              rewrite=read_responses_request, lifecycle="refer"),
        # A stored response's own calls name no model: the allow-lists met its create.
        Route(_RESPONSE_ID, "responses.retrieve", methods=("GET",), body="raw", free=True,
              read_answer=note_response, on_event=responses_event, lifecycle="use", models=""),
        Route(_RESPONSE_ID, "responses.delete", methods=("DELETE",), body="raw", free=True, lifecycle="delete",
              models=""),
        Route(_RESPONSE_ID + r"/cancel", "responses.cancel", body="raw", free=True, read_answer=note_response,
              lifecycle="use", models=""),
        Route(_RESPONSE_ID + r"/input_items", "responses.input_items", methods=("GET",), body="raw", free=True,
              lifecycle="use", models=""),
    ]


# -- Images -------------------------------------------------------------------
#
# GPT image models report token usage, with text and image input priced apart:
# text input tokens are billed as input tokens, image input tokens as units
# "image_input_tokens" (per_unit is the price of one such token), output
# tokens at the output price, those `output_tokens_details` calls image tokens
# at the image output price where the model has one (gpt-image-1.5).
# DALL-E models report no usage: they are billed per image ("images"), the
# price depending on size and quality, looked up as the price tier
# "<model> <quality> <size>" or "<model> <size>" when the table has one.
#
# Edits come as multipart/form-data (files) or JSON (image URLs). Both are
# relayed byte for byte (a raw route); Kylon only reads the few text fields it
# bills by (model, stream, size, quality, prompt).

# OpenAI counts each partial image of a stream as 100 output image tokens: the
# estimate of a stream cut before its completed event.
PARTIAL_IMAGE_TOKENS = 100
# The output tokens of the largest high-quality GPT image (1536x1024): what a
# call holds per image while it runs.
HOLD_IMAGE_OUTPUT_TOKENS = 6240
# Request fields only GPT image models take: with one of them and no model,
# OpenAI uses gpt-image-1 rather than its default dall-e-2.
_GPT_IMAGE_ONLY = ("background", "moderation", "output_compression", "output_format", "partial_images",
                   "input_fidelity", "stream")
_IMAGE_FIELDS = ("model", "stream", "size", "quality", "prompt", "n") + _GPT_IMAGE_ONLY


def image_usage(body):
    """Usage of an images answer, or of a stream's completed event."""
    usage = member(body, "usage")
    if isinstance(usage, dict):
        image_input = integer(usage, "input_tokens_details", "image_tokens")
        return Usage(
            input_tokens=max(integer(usage, "input_tokens") - image_input, 0),
            output_tokens=integer(usage, "output_tokens"),
            # The rest of the output is text (gpt-image-1.5 and later price it apart).
            image_output_tokens=integer(usage, "output_tokens_details", "image_tokens"),
            unit="image_input_tokens" if image_input else "",
            units=Decimal(image_input),
        )
    data = member(body, "data")
    if isinstance(data, list) and data:
        return Usage(unit="images", units=Decimal(len(data)))
    return None


def image_event(exchange, event):
    """Image streams: `*.partial_image` events, then `*.completed` with usage.
    (Base64 never holds a dot or a quote, so the byte tests cannot hit image data.)"""
    data = event.data
    if not data:
        return True
    if event.name.endswith(b".completed") or b'_generation.completed"' in data or b'_edit.completed"' in data:
        payload = json_or_none(data)
        usage = image_usage(payload) if payload is not None else None
        if usage is not None:
            exchange.usage = usage
            exchange.usage_final = True
    elif event.name.endswith(b".partial_image") or b'.partial_image"' in data:
        if exchange.usage is not None and not exchange.usage_final:
            exchange.usage.output_tokens += PARTIAL_IMAGE_TOKENS
    return True


def describe_image_call(exchange, request, whole=True):
    """Model, stream flag, price tier and an input estimate of an images call.
    `request`: the JSON body, or the text fields of a multipart one; `whole`
    False when only the start of a streamed form was seen (see proxy.py)."""
    model = request.get("model")
    if not isinstance(model, str) or not model:
        # OpenAI's default model; unknown (the fallback price, flagged) when
        # the field may be further on in a form only partly seen.
        default = "gpt-image-1" if any(request.get(f) is not None for f in _GPT_IMAGE_ONLY) else "dall-e-2"
        model = default if whole else ""
    exchange.model = model
    exchange.stream = request.get("stream") in (True, "true", "True")
    size = request.get("size") or "1024x1024"
    quality = request.get("quality") or "standard"
    for tier in (f"{model} {quality} {size}", f"{model} {size}"):
        if tier in PRICES:
            exchange.price_model = tier
            break
    # Until the answer says otherwise (a cut stream, a cancelled call): the
    # prompt's tokens, estimated. Images bytes are not text tokens.
    prompt = request.get("prompt")
    exchange.usage = Usage(input_tokens=math.ceil(len(prompt) / 4) if isinstance(prompt, str) else 0,
                           estimated=True)


def read_generation_request(exchange, body):
    describe_image_call(exchange, body)
    return False


_PART_NAME = re.compile(rb'[;\s]name="([^"]*)"', re.IGNORECASE)


def multipart_fields(body, names):
    """The text fields `names` of a multipart/form-data body, read in place: file
    parts are skipped and nothing is re-encoded. The delimiter is the body's
    first line (`--boundary`). Returns (fields, whether the form's end was
    seen): the start of a body yields the fields seen so far."""
    line_end = body.find(b"\r\n")
    if not body.startswith(b"--") or line_end < 0:
        return {}, False
    delimiter = b"\r\n" + body[:line_end]
    fields = {}
    pos = line_end + 2
    while True:
        head_end = body.find(b"\r\n\r\n", pos)
        if head_end < 0:
            break
        end = body.find(delimiter, head_end + 4)
        if end < 0:
            break
        head = body[pos:head_end]
        name = _PART_NAME.search(head)
        if name is not None and b"filename=" not in head.lower():
            key = name.group(1).decode("utf-8", "replace")
            if key in names:
                fields[key] = body[head_end + 4 : end].decode("utf-8", "replace")
        pos = end + len(delimiter)
        if body[pos : pos + 2] == b"--":
            return fields, True
        pos += 2
    return fields, False


def read_edit_request(exchange, body):
    """An edit is JSON (image URLs) or multipart (files); both go upstream as
    they came. What was read (the JSON, or the form's text fields) is kept as
    the request's fields: the hold reads its `n` there."""
    if body.lstrip()[:1] == b"{":
        exchange.request_json = json_or_none(body) or {}
        describe_image_call(exchange, exchange.request_json)
    else:
        fields, whole = multipart_fields(body, _IMAGE_FIELDS)
        exchange.request_json = fields
        describe_image_call(exchange, fields, whole)
    return body


def image_count(request):
    """The images a call asks for: `n`, a JSON integer or a form field's
    digits; 1 when absent or not a count (OpenAI refuses those itself). Any
    count is held, up to MAX_COPIES (more than any balance covers)."""
    n = request.get("n")
    if isinstance(n, str) and n.isascii() and n.strip().isdigit():
        n = int(n) if len(n) < 20 else MAX_COPIES
    return min(n, MAX_COPIES) if type(n) is int and n > 0 else 1


def image_hold(exchange):
    """Per image, the dearest answer (a large high-quality GPT image is 6,240
    output tokens; DALL-E, one image). Uploaded image bytes are not text
    tokens: a large edit must not hold as if it were a long prompt."""
    n = image_count(exchange.request_json or {})
    return Usage(output_tokens=HOLD_IMAGE_OUTPUT_TOKENS * n, units=Decimal(n))


# Per million tokens for GPT image models (per_unit: one image input token),
# per image for DALL-E by price tier (see above): kylon/prices.json.
PRICES = table("openai")


class OpenAICompatible(Provider):
    """What OpenAI's API and the APIs shaped like it (Cerebras, OpenRouter) share."""

    checked_fields = {**Provider.checked_fields, "max_completion_tokens": int, "max_output_tokens": int, "n": int}
    bounded_fields = {"max_tokens": (0, MAX_TOKENS), "max_completion_tokens": (0, MAX_TOKENS),
                      "max_output_tokens": (0, MAX_TOKENS), "n": (1, MAX_COPIES)}
    # Chat's current field, the Responses API's, then chat's older one.
    output_limit_fields = ("max_completion_tokens", "max_output_tokens", "max_tokens")

    def output_limit(self, body):
        """The output limit, for each of chat's `n` answers."""
        limit, count = super().output_limit(body), body.get("n")
        if type(count) is not int or count <= 1:
            return limit
        return (self.default_hold_output_tokens if limit is None else limit) * count


class OpenAI(OpenAICompatible):
    name = "openai"
    api_key_env = "OPENAI_API_KEY"
    base_url_env = "KYLON_OPENAI_BASE_URL"
    default_base_url = "https://api.openai.com"
    # The operator's organisation and project go with the operator's key.
    drop_request_headers = ("openai-organization", "openai-project")

    routes = [
        chat_completions_route(),
        *responses_routes(),
        Route(
            r"/v1/images/generations",
            "images.generations",
            read_usage=image_usage,
            on_event=image_event,
            rewrite=read_generation_request,
            hold=image_hold,
        ),
        # JSON or multipart: opaque bytes, read by read_edit_request.
        Route(
            r"/v1/images/edits",
            "images.edits",
            body="raw",
            read_usage=image_usage,
            on_event=image_event,
            prepare=read_edit_request,
            hold=image_hold,
        ),
        *model_routes(),
    ]

    # Credits per million tokens (1 credit = 1 USD): kylon/prices.json, from
    # genai-prices, plus DALL-E's per-image tiers. Unknown models pay OpenAI's
    # dearest current model's price (units: image input tokens at the dearest
    # GPT image rate), flagged.
    prices = PRICES
    fallback_price = PRICES.fallback


provider = OpenAI()
