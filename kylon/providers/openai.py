"""OpenAI: chat completions and the Responses API.

Chat-completion streams report usage only when asked
(`stream_options.include_usage`); Kylon always asks, and keeps the extra usage
chunk from a client that did not. Responses streams end with
`response.completed` (or `.failed` / `.incomplete`) carrying the usage.
"""

import re

from ..billing import Price, Usage
from .base import Provider, Route, integer, json_or_none

# Chat chunks carry `"usage":null` on every event once usage is requested; only
# a chunk with a real usage object needs parsing.
_USAGE_NULL = re.compile(rb'"usage"\s*:\s*null')


def chat_usage(body):
    """Usage of a chat.completion (or a usage chunk)."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    return Usage(
        input_tokens=integer(usage, "prompt_tokens"),
        cached_input_tokens=integer(usage, "prompt_tokens_details", "cached_tokens"),
        cache_write_tokens=integer(usage, "prompt_tokens_details", "cache_write_tokens"),
        output_tokens=integer(usage, "completion_tokens"),
        reasoning_tokens=integer(usage, "completion_tokens_details", "reasoning_tokens"),
    )


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
    if data is None or data == b"[DONE]":
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
    exchange.output_events += 1
    return True


def responses_usage(body):
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    return Usage(
        input_tokens=integer(usage, "input_tokens"),
        cached_input_tokens=integer(usage, "input_tokens_details", "cached_tokens"),
        cache_write_tokens=integer(usage, "input_tokens_details", "cache_write_tokens"),
        output_tokens=integer(usage, "output_tokens"),
        reasoning_tokens=integer(usage, "output_tokens_details", "reasoning_tokens"),
    )


_RESPONSE_FINAL = (b"response.completed", b"response.failed", b"response.incomplete")


def responses_event(exchange, event):
    name = event.name
    if name.endswith(b".delta"):
        exchange.output_events += 1
    elif name in _RESPONSE_FINAL or (not name and event.data and b'"response.' in event.data):
        payload = json_or_none(event.data or b"")
        if payload is not None and isinstance(payload.get("response"), dict):
            usage = responses_usage(payload["response"])
            if usage is not None:
                exchange.usage = usage
                exchange.usage_final = True
    return True


class OpenAI(Provider):
    name = "openai"
    error_style = "openai"
    api_key_env = "OPENAI_API_KEY"
    base_url_env = "KYLON_OPENAI_BASE_URL"
    default_base_url = "https://api.openai.com"
    # The operator's organisation and project go with the operator's key.
    drop_request_headers = ("openai-organization", "openai-project")

    routes = [
        Route(
            r"/v1/chat/completions",
            "chat.completions",
            read_usage=chat_usage,
            on_event=chat_event,
            rewrite=ask_for_stream_usage,
        ),
        Route(r"/v1/responses", "responses", read_usage=responses_usage, on_event=responses_event),
    ]

    # Credits per million tokens (1 credit = 1 USD), OpenAI's list prices.
    prices = {
        "gpt-5.2": Price.of(input="1.75", cached_input="0.175", output="14.00"),
        "gpt-5.1": Price.of(input="1.25", cached_input="0.125", output="10.00"),
        "gpt-5": Price.of(input="1.25", cached_input="0.125", output="10.00"),
        "gpt-5-mini": Price.of(input="0.25", cached_input="0.025", output="2.00"),
        "gpt-5-nano": Price.of(input="0.05", cached_input="0.005", output="0.40"),
        "gpt-4.1": Price.of(input="2.00", cached_input="0.50", output="8.00"),
        "gpt-4.1-mini": Price.of(input="0.40", cached_input="0.10", output="1.60"),
        "gpt-4.1-nano": Price.of(input="0.10", cached_input="0.025", output="0.40"),
        "gpt-4o": Price.of(input="2.50", cached_input="1.25", output="10.00"),
        "gpt-4o-mini": Price.of(input="0.15", cached_input="0.075", output="0.60"),
        "o1": Price.of(input="15.00", cached_input="7.50", output="60.00"),
        "o3": Price.of(input="2.00", cached_input="0.50", output="8.00"),
        "o3-pro": Price.of(input="20.00", output="80.00"),
        "o3-mini": Price.of(input="1.10", cached_input="0.55", output="4.40"),
        "o4-mini": Price.of(input="1.10", cached_input="0.275", output="4.40"),
    }
    # Unknown models are charged like the dearest common model, and flagged.
    fallback_price = Price.of(input="5.00", output="20.00")


provider = OpenAI()
