"""OpenRouter: OpenAI-shaped chat completions at https://openrouter.ai/api/v1.

Clients use the `openai` SDK with base URL `…/proxy/openrouter/v1`; Kylon adds
OpenRouter's `/api` prefix upstream.

Billing: OpenRouter always reports usage (in the body, or on the last chunk of a
stream) and prices it itself in `usage.cost`, in credits (USD). That amount is
what Kylon charges (Usage.reported_cost). For a BYOK call `cost` is only
OpenRouter's fee, and `cost_details.upstream_inference_cost` is what the
operator's own provider key was charged: Kylon charges the sum. Only when no
cost is reported are the tokens priced from the table below.

Streams: OpenRouter's keep-alive comment lines (`: OPENROUTER PROCESSING`) are
relayed (SDKs skip them) and never parsed. An error after the first tokens
arrives as a chunk with `error` and finish_reason "error" on an HTTP 200 stream;
it is relayed as is (the `openai` SDK raises APIError on it) and the call is
billed from the usage it carries, else estimated.

Attribution headers: when the operator sets KYLON_OPENROUTER_REFERER and/or
KYLON_OPENROUTER_TITLE, every call is attributed to the operator's app:
`HTTP-Referer`, and the title as both `X-OpenRouter-Title` and the older
`X-Title`, replacing whatever the client sent in those headers. Where the
operator set nothing, the client's own headers pass through (an agent may name
itself).
"""

from decimal import Decimal, InvalidOperation

from ..prices import table
from .base import ModelListing, Route, json_or_none
from .openai import OpenAICompatible, chat_event, chat_usage

TITLE_HEADERS = ("X-OpenRouter-Title", "X-Title")


def reported_cost(usage):
    """Credits OpenRouter reported for a call, or None."""
    cost = _decimal(usage.get("cost"))
    if cost is None:
        return None
    if usage.get("is_byok") is True:
        details = usage.get("cost_details")
        upstream = _decimal(details.get("upstream_inference_cost")) if isinstance(details, dict) else None
        cost += upstream or 0
    return cost


def _decimal(value):
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        # str() of a float is its shortest exact form: 6.4e-06 -> Decimal("0.0000064").
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() and number >= 0 else None


def openrouter_usage(body):
    usage = chat_usage(body)
    if usage is not None:
        usage.reported_cost = reported_cost(body["usage"])
    return usage


def openrouter_event(exchange, event):
    keep = chat_event(exchange, event)
    data = event.data
    # chat_event has just read the tokens of a usage chunk; add its cost.
    if data and b'"cost"' in data and exchange.usage_final:
        chunk = json_or_none(data)
        if chunk is not None and isinstance(chunk.get("usage"), dict):
            exchange.usage.reported_cost = reported_cost(chunk["usage"])
    return keep


class OpenRouter(OpenAICompatible):
    name = "openrouter"
    api_key_env = "OPENROUTER_API_KEY"
    base_url_env = "KYLON_OPENROUTER_BASE_URL"
    default_base_url = "https://openrouter.ai"
    upstream_prefix = "/api"
    # The generation id (what OpenRouter's own logs and /generation know) first.
    upstream_id_headers = ("x-generation-id", "x-request-id")

    routes = [
        Route(r"/v1/chat/completions", "chat.completions", read_usage=openrouter_usage, on_event=openrouter_event),
        # The model list (OpenRouter has no retrieve of one model), filtered by the allow-lists.
        *ModelListing().routes(r"/v1/models"),
    ]

    # Credits per million tokens, used only when OpenRouter reports no cost:
    # kylon/prices.json, from genai-prices' OpenRouter table. An unknown model
    # without a reported cost pays the dearest current model's price, flagged.
    prices = table("openrouter")
    fallback_price = prices.fallback

    def configure(self, env):
        super().configure(env)
        referer = (env.get("KYLON_OPENROUTER_REFERER") or "").strip()
        title = (env.get("KYLON_OPENROUTER_TITLE") or "").strip()
        attribution = {}
        if referer:
            attribution["HTTP-Referer"] = referer
        if title:
            attribution.update({name: title for name in TITLE_HEADERS})
        # The client's own headers of the same names are dropped, the operator's sent.
        self.drop_request_headers = tuple(name.lower() for name in attribution)
        self.default_request_headers = attribution


provider = OpenRouter()
