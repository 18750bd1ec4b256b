"""Cerebras: OpenAI-shaped chat completions at https://api.cerebras.ai/v1.

The wire format is OpenAI's, so usage is read by OpenAI's own functions. A
Cerebras stream reports `usage` (with `time_info`) on its finish_reason chunk
even unasked; Kylon still asks (`stream_options.include_usage`) and takes usage
from whichever chunk carries it.

The `cerebras-cloud-sdk` client sends `GET /v1/tcp_warming` from its
constructor to open a connection early. Kylon passes it through (it warms
Kylon's own connection to Cerebras too) and records it at zero credits: it is
not a model call.
"""

from ..prices import table
from .base import Route
from .openai import OpenAICompatible, chat_completions_route, model_routes


class Cerebras(OpenAICompatible):
    name = "cerebras"
    api_key_env = "CEREBRAS_API_KEY"
    base_url_env = "KYLON_CEREBRAS_BASE_URL"
    default_base_url = "https://api.cerebras.ai"

    routes = [
        chat_completions_route(),
        # A warm-up is free, and says so (not an estimate of a model call).
        Route(r"/v1/tcp_warming", "tcp_warming", methods=("GET", "HEAD"), body="raw", free=True, models=""),
        *model_routes(),
    ]

    # Credits per million tokens (1 credit = 1 USD): kylon/prices.json, from
    # genai-prices. Unknown models pay the dearest current model's price, flagged.
    prices = table("cerebras")
    fallback_price = prices.fallback

provider = Cerebras()
