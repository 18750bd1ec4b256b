"""Anthropic: the Messages API (`/v1/messages`) and its free token counter.

The operator's key goes upstream as `x-api-key`; `anthropic-version` and
`anthropic-beta` pass through (a default version is added when the client sent
none), and so does the query string (the SDK's beta calls use `?beta=true`).

Usage: Anthropic's `input_tokens` excludes the tokens read from and written to
the prompt cache, so Kylon's input total is the sum of the three. Streams are
named SSE events: input and cache counts arrive in `message_start`, output in
`message_delta` (cumulative figures: the last one wins, never a sum; input
fields present there supersede those of `message_start`).

The functions here also serve Claude on Vertex AI (anthropic_vertex.py).
"""

from ..billing import Usage
from ..prices import table
from .base import ModelListing, Provider, Route, error_message, integer, json_or_none, member

# The error type Anthropic's SDK maps to each exception class.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
}


def anthropic_error_body(status, message, code=None):
    """Kylon's own errors as Anthropic shapes them (also for Claude on Vertex);
    Kylon's machine-readable code, when it names one, beside the message."""
    error = {"type": ERROR_TYPES.get(status, "api_error"), "message": message}
    if code:
        error["code"] = code
    return {"type": "error", "error": error}


def usage_from_fields(fields):
    """Usage from an Anthropic `usage` object."""
    cache_write = integer(fields, "cache_creation_input_tokens")
    cache_read = integer(fields, "cache_read_input_tokens")
    return Usage(
        input_tokens=integer(fields, "input_tokens") + cache_write + cache_read,
        cached_input_tokens=cache_read,
        cache_write_tokens=cache_write,
        # The part of the writes kept an hour (2x input; 5 minutes is 1.25x).
        cache_write_1h_tokens=integer(fields, "cache_creation", "ephemeral_1h_input_tokens"),
        output_tokens=integer(fields, "output_tokens"),
        tool_calls=server_tool_calls(fields.get("server_tool_use")),
        service_tier=string(fields, "service_tier"),
        speed=string(fields, "speed"),
    )


# server_tool_use counts -> Kylon's tool names (web fetches cost only their tokens).
_SERVER_TOOLS = {"web_search_requests": "web_search", "web_fetch_requests": "web_fetch"}


def server_tool_calls(counts):
    """{tool: calls} from Anthropic's `server_tool_use`, or None."""
    if not isinstance(counts, dict):
        return None
    calls = {tool: integer(counts, key) for key, tool in _SERVER_TOOLS.items() if integer(counts, key)}
    return calls or None


def string(fields, key):
    value = fields.get(key)
    return value if isinstance(value, str) else ""


def message_usage(body):
    """Usage of a non-streamed Message."""
    fields = member(body, "usage")
    return usage_from_fields(fields) if isinstance(fields, dict) else None


def no_usage(body):
    """Token counting is free: a reported, empty usage."""
    return Usage()


def message_event(exchange, event):
    """Reads usage from a Messages stream; every event goes on to the client."""
    name = event.name
    if name == b"content_block_delta":
        exchange.output_events += 1
    elif name in (b"message_start", b"message_delta"):
        payload = json_or_none(event.data or b"") or {}
        if name == b"message_start":
            message = payload.get("message")
            payload = message if isinstance(message, dict) else {}
        fields = payload.get("usage")
        if isinstance(fields, dict):
            # Figures so far, field by field: later events supersede earlier ones.
            seen = exchange.usage_fields
            seen.update({k: v for k, v in fields.items() if isinstance(v, (int, str, dict))})
            exchange.usage = usage_from_fields(seen)
            if name == b"message_delta":
                exchange.usage_final = True
    elif name == b"message_stop":
        exchange.stream_done = True
        if exchange.usage is not None:
            exchange.usage_final = True
    elif name == b"error":
        # The answer broke off (e.g. overloaded_error): no final output figure
        # will come, so bill the deltas seen and say it is an estimate.
        exchange.stream_error = error_message(json_or_none(event.data or b"")) or "error event"
        usage = exchange.usage
        if usage is not None and not exchange.usage_final:
            usage.output_tokens = max(usage.output_tokens, exchange.output_events)
            usage.estimated = True
    return True


# Credits per million tokens (1 credit = 1 USD): kylon/prices.json, from
# genai-prices (cache reads, 5-minute and 1-hour writes, tiers above 200k
# prompt tokens, web searches, fast-mode prices). Dated snapshots
# (claude-sonnet-4-5-20250929) find their model by its match rules. Unknown
# models pay the dearest current Claude's price, flagged.
CLAUDE_PRICES = table("anthropic")

MESSAGE_ROUTES = [
    Route(r"/v1/messages", "messages", read_usage=message_usage, on_event=message_event),
    Route(r"/v1/messages/count_tokens", "messages.count_tokens", read_usage=no_usage),
]


class Anthropic(Provider):
    name = "anthropic"
    api_key_env = "ANTHROPIC_API_KEY"
    base_url_env = "KYLON_ANTHROPIC_BASE_URL"
    default_base_url = "https://api.anthropic.com"
    # The current SDK sends its key as a Bearer token; older ones as x-api-key.
    client_key_headers = ("x-api-key", "authorization")
    default_request_headers = {"anthropic-version": "2023-06-01"}
    upstream_id_headers = ("request-id",)
    routes = MESSAGE_ROUTES + ModelListing(cursors=True, page_size="limit").routes(
        r"/v1/models", r"/v1/models/(?P<model>[^/]+)")
    prices = CLAUDE_PRICES
    fallback_price = CLAUDE_PRICES.fallback

    def auth_headers(self):
        return {"x-api-key": self.api_key}

    def error_body(self, status, message, code=None):
        return anthropic_error_body(status, message, code)


provider = Anthropic()
