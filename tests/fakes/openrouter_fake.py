"""A fake OpenRouter API speaking the real wire format, under `/api/v1`:
OpenAI-shaped chat completions whose usage always comes (in the body, or on the
last chunk of a stream, asked or not) with `cost` in credits; streams open with
a keep-alive comment line (`: OPENROUTER PROCESSING`) and repeat it mid-stream;
errors `{"error":{"code","message","metadata"?}}` with HTTP status = code; the
`X-Generation-Id` response header.

The model name picks a behaviour:
  error-402 / error-429 / error-400   answer with that HTTP error
  mid-stream-error   a few chunks, then an error chunk (finish_reason "error")
  mid-stream-error-linger   the same, then 2 s before the answer ends
  silent-stream      one chunk, then silence for 30 s (a disconnect test)
  no-cost            usage without `cost` (Kylon prices the tokens itself)
  byok/...           a BYOK call: `cost` is OpenRouter's fee, the provider's
                     charge is in cost_details.upstream_inference_cost
Anything else answers normally. Usage: prompt 10 (4 cached), completion 20
(6 reasoning), cost 0.0000064; BYOK: cost 0.0000032 + upstream 0.000064.
"""

import asyncio
import json
import time

from .server import FakeServer, RecordingHandler

PROMPT_TOKENS = 10
CACHED_TOKENS = 4
COMPLETION_TOKENS = 20
REASONING_TOKENS = 6
COST = "0.0000064"
BYOK_FEE = "0.0000032"
BYOK_UPSTREAM = "0.000064"
WORDS = ["Hi", " there", " from", " OpenRouter"]
KEEP_ALIVE = ": OPENROUTER PROCESSING\n\n"


def usage(model):
    figures = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": REASONING_TOKENS},
        "is_byok": False,
    }
    if model.startswith("byok/"):
        figures.update(cost=float(BYOK_FEE), is_byok=True,
                       cost_details={"upstream_inference_cost": float(BYOK_UPSTREAM)})
    elif model != "no-cost":
        figures.update(cost=float(COST), cost_details={"upstream_inference_cost": float(COST)})
    return figures


def error(code, message, **metadata):
    body = {"error": {"code": code, "message": message}}
    if metadata:
        body["error"]["metadata"] = metadata
    return body


ERRORS = {
    "error-402": error(402, "Insufficient credits. Add more using https://openrouter.ai/credits"),
    "error-429": error(429, "Rate limit exceeded: free-models-per-min."),
    "error-400": error(400, "moonshotai/kimi-k3 is not a valid model ID"),
}


class ChatCompletions(RecordingHandler):
    async def post(self):
        if self.request.headers.get("Authorization") != f"Bearer {self.fake.api_key}":
            self.set_status(401)
            self.finish(error(401, "Missing Authentication header"))
            return
        body = json.loads(self.request.body or b"{}")
        model = body.get("model", "")
        if model in ERRORS:
            payload = ERRORS[model]
            self.set_status(payload["error"]["code"])
            if model == "error-429":
                self.set_header("Retry-After", "1")
            self.finish(payload)
            return
        self.set_header("X-Generation-Id", "gen-fake-1")
        base = {"id": "gen-fake-1", "provider": "Moonshot AI", "model": model, "created": int(time.time())}
        if not body.get("stream"):
            self.finish({**base, "object": "chat.completion",
                         "choices": [{"index": 0, "finish_reason": "stop", "native_finish_reason": "stop",
                                      "message": {"role": "assistant", "content": "".join(WORDS)}}],
                         "usage": usage(model)})
            return
        self.set_header("Content-Type", "text/event-stream")

        def chunk(delta, finish=None, **extra):
            return {**base, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}

        if not await self.send(KEEP_ALIVE):
            return
        for i, word in enumerate(WORDS):
            if not await self.send(chunk({"role": "assistant", "content": word})):
                return
            if i == 0:
                if model == "silent-stream":
                    await self.sleep_unless_closed(30)
                    return
                await self.send(KEEP_ALIVE)
            if i == 1 and model.startswith("mid-stream-error"):
                await self.send(chunk({"content": ""}, "error",
                                      error={"code": 502, "message": "Provider returned error"}))
                if model.endswith("-linger"):
                    await asyncio.sleep(2)
                self.finish()
                return
        await self.send(chunk({"content": ""}, "stop", usage=usage(model)))
        await self.send("data: [DONE]\n\n")
        self.finish()

    async def send(self, payload):
        if self.client_gone():
            return False
        self.write(payload if isinstance(payload, str) else f"data: {json.dumps(payload)}\n\n")
        try:
            await self.flush()
        except Exception:
            return False
        return True


# GET /api/v1/models as OpenRouter answers it: {"data": [...]}, no paging.
MODELS = [
    {"id": model, "canonical_slug": model, "name": name, "context_length": 131072,
     "pricing": {"prompt": "0.0000006", "completion": "0.0000025"}}
    for model, name in [("moonshotai/kimi-k2", "MoonshotAI: Kimi K2"), ("moonshotai/kimi-k2:free", "Kimi K2 (free)"),
                        ("openai/gpt-4o-mini", "OpenAI: GPT-4o-mini"), ("anthropic/claude-sonnet-4.5", "Claude Sonnet 4.5"),
                        ("meta-llama/llama-3.3-70b-instruct", "Llama 3.3 70B")]
]


class Models(RecordingHandler):
    def get(self):
        # OpenRouter lists its models to anyone; Kylon sends the operator's key anyway.
        self.finish({"data": MODELS})


class FakeOpenRouter(FakeServer):
    def __init__(self, api_key="sk-or-v1-operator-openrouter-secret"):
        self.api_key = api_key
        super().__init__([(r"/api/v1/chat/completions", ChatCompletions), (r"/api/v1/models", Models)])

    def kylon_env(self):
        # The operator names its app; tests/test_openrouter.py also runs a Kylon without.
        return {"OPENROUTER_API_KEY": self.api_key, "KYLON_OPENROUTER_BASE_URL": self.url,
                "KYLON_OPENROUTER_REFERER": "https://gateway.example", "KYLON_OPENROUTER_TITLE": "Kylon Gateway"}

    def secrets(self):
        return {self.api_key}


def start():
    return FakeOpenRouter()
