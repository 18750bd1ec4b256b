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

from ..billing import Price
from .base import Route
from .openai import OpenAICompatible, chat_completions_route


class Cerebras(OpenAICompatible):
    name = "cerebras"
    api_key_env = "CEREBRAS_API_KEY"
    base_url_env = "KYLON_CEREBRAS_BASE_URL"
    default_base_url = "https://api.cerebras.ai"

    routes = [
        chat_completions_route(),
        # A warm-up is free, and says so (not an estimate of a model call).
        Route(r"/v1/tcp_warming", "tcp_warming", methods=("GET", "HEAD"), body="raw", free=True),
    ]

    # Credits per million tokens (1 credit = 1 USD), Cerebras' pay-as-you-go prices.
    prices = {
        "llama3.1-8b": Price.of(input="0.10", output="0.10"),
        "llama-3.3-70b": Price.of(input="0.85", output="1.20"),
        "gpt-oss-120b": Price.of(input="0.35", output="0.75"),
        "qwen-3-32b": Price.of(input="0.40", output="0.80"),
        "qwen-3-235b-a22b-instruct-2507": Price.of(input="0.60", output="1.20"),
        "qwen-3-235b-a22b-thinking-2507": Price.of(input="0.60", output="2.90"),
        "qwen-3-coder-480b": Price.of(input="2.00", output="2.00"),
        "llama-4-scout-17b-16e-instruct": Price.of(input="0.65", output="0.85"),
        "llama-4-maverick-17b-128e-instruct": Price.of(input="0.20", output="0.60"),
        "zai-glm-4.6": Price.of(input="2.25", output="2.75"),
    }
    # Unknown models are charged like the dearest listed model, and flagged.
    fallback_price = Price.of(input="2.25", output="2.90")


provider = Cerebras()
