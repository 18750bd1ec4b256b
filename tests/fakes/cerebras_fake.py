"""A fake Cerebras API speaking the real wire format: OpenAI-shaped chat
completions plus `time_info`; streams (data-only SSE ending in [DONE]) carry
`usage` and `time_info` on the finish_reason chunk, asked or not, as a recorded
Cerebras stream does; `GET /v1/tcp_warming`, which the SDK's constructor sends.

The model name picks a behaviour:
  error-429 / error-402 / error-400   answer with that HTTP error
  silent-stream      one chunk, then silence for 30 s (a disconnect test)
  stream-error       a few chunks, then an error chunk, then the end
Anything else answers normally. Usage: prompt 45 (5 cached), completion 11.
"""

import json
import time

from .server import FakeServer, RecordingHandler

PROMPT_TOKENS = 45
CACHED_TOKENS = 5
COMPLETION_TOKENS = 11
WORDS = ["Hello", " from", " Cerebras", "!"]


def usage():
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
    }


def time_info():
    return {"queue_time": 0.00009, "prompt_time": 0.0027, "completion_time": 0.0037, "total_time": 0.0084,
            "created": time.time()}


def error(message, err_type, code, param=None):
    return {"message": message, "type": err_type, "param": param, "code": code}


ERRORS = {
    "error-429": (429, error("Requests per minute limit exceeded", "too_many_requests_error", "request_quota_exceeded")),
    "error-402": (402, error("Payment required: your balance is exhausted", "payment_required", "payment_required")),
    "error-400": (400, error("Model does not exist", "invalid_request_error", "model_not_found", "model")),
}


class CerebrasHandler(RecordingHandler):
    def prepare(self):
        super().prepare()
        if self.request.headers.get("Authorization") != f"Bearer {self.fake.api_key}":
            self.set_status(401)
            self.finish(error("Wrong API Key", "invalid_request_error", "wrong_api_key", "api_key"))


class TcpWarming(CerebrasHandler):
    def get(self):
        self.set_header("Content-Type", "text/plain")
        self.finish("")


class ChatCompletions(CerebrasHandler):
    async def post(self):
        body = json.loads(self.request.body or b"{}")
        model = body.get("model", "")
        if model in ERRORS:
            status, payload = ERRORS[model]
            self.set_status(status)
            self.finish(payload)
            return
        base = {"id": "chatcmpl-cb1", "created": int(time.time()), "model": model, "system_fingerprint": "fp_cb"}
        if not body.get("stream"):
            self.finish({**base, "object": "chat.completion",
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": "".join(WORDS)}}],
                         "usage": usage(), "time_info": time_info()})
            return
        self.set_header("Content-Type", "text/event-stream")

        def chunk(delta, finish=None, **extra):
            return {**base, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}

        if not await self.send(chunk({"role": "assistant"})):
            return
        for i, word in enumerate(WORDS):
            if not await self.send(chunk({"content": word})):
                return
            if i == 0 and model == "silent-stream":
                await self.sleep_unless_closed(30)
                return
            if i == 1 and model == "stream-error":
                await self.send({"error": error("Internal server error", "server_error", "internal_error")})
                self.finish()
                return
        await self.send(chunk({}, "stop", usage=usage(), time_info=time_info()))
        self.write("data: [DONE]\n\n")
        self.finish()

    async def send(self, payload):
        if self.client_gone():
            return False
        self.write(f"data: {json.dumps(payload)}\n\n")
        try:
            await self.flush()
        except Exception:
            return False
        return True


# GET /v1/models as Cerebras answers it (OpenAI's shape).
MODELS = [{"id": model, "object": "model", "created": 0, "owned_by": owner}
          for model, owner in [("llama3.1-8b", "Meta"), ("llama-3.3-70b", "Meta"), ("qwen-3-32b", "Qwen"),
                               ("gpt-oss-120b", "OpenAI")]]


class Models(CerebrasHandler):
    def get(self, model=None):
        if model is None:
            return self.finish({"object": "list", "data": MODELS})
        found = [m for m in MODELS if m["id"] == model]
        if not found:
            self.set_status(404)
            return self.finish(error(f"Model {model} does not exist.", "not_found_error", "model_not_found", "model"))
        self.finish(found[0])


class FakeCerebras(FakeServer):
    def __init__(self, api_key="csk-operator-cerebras-secret"):
        self.api_key = api_key
        super().__init__([(r"/v1/chat/completions", ChatCompletions), (r"/v1/tcp_warming", TcpWarming),
                          (r"/v1/models", Models), (r"/v1/models/([^/]+)", Models)])

    def kylon_env(self):
        return {"CEREBRAS_API_KEY": self.api_key, "KYLON_CEREBRAS_BASE_URL": self.url}

    def secrets(self):
        return {self.api_key}


def start():
    return FakeCerebras()
