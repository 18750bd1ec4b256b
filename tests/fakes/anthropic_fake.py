"""A fake Anthropic API speaking the real wire format: `/v1/messages`, plain
and streamed (named SSE events `message_start` … `message_stop`, with `ping`),
`/v1/messages/count_tokens`, and Anthropic's error bodies. It insists, like the
real API, on `x-api-key` and an `anthropic-version` header.

The Messages logic (MessagesHandler) also serves the Vertex fake, which only
differs in where the model is and how the caller authenticates.

The model name picks a behaviour, so a test needs no set-up calls:
  error-429 / error-529 / error-400   answer with that HTTP error
  silent-stream     the first delta, then silence for 30 s (a disconnect test)
  error-mid-stream  two deltas, then `event: error` (overloaded) and the end
  revised-usage     two message_delta events: output 5, then cumulative output
                    12 with revised input figures (input_tokens 11)
Anything else answers normally with fixed usage: input 10, cache written 20,
cache read 30, output 12.

A test adds usage fields the real API reports only for some calls with an
`x-fake-usage` header (JSON merged into the usage object; `x-fake-response`
into the answer, `x-fake-candidate` into Gemini's candidate): see
RecordingHandler.with_test_fields.
"""

import json

from .server import FakeServer, RecordingHandler

INPUT_TOKENS = 10
CACHE_WRITE_TOKENS = 20
CACHE_READ_TOKENS = 30
OUTPUT_TOKENS = 12
# What revised-usage's last message_delta says about input.
REVISED_INPUT_TOKENS = 11
COUNTED_TOKENS = 42
WORDS = ["Hello", " from", " the", " fake", " upstream", "!"]


def usage(**changes):
    return {
        "input_tokens": INPUT_TOKENS,
        "cache_creation_input_tokens": CACHE_WRITE_TOKENS,
        "cache_read_input_tokens": CACHE_READ_TOKENS,
        "cache_creation": {"ephemeral_5m_input_tokens": CACHE_WRITE_TOKENS, "ephemeral_1h_input_tokens": 0},
        "output_tokens": OUTPUT_TOKENS,
        "service_tier": "standard",
        **changes,
    }


def anthropic_error(err_type, message):
    return {"type": "error", "error": {"type": err_type, "message": message}, "request_id": "req_fake_error"}


ERRORS = {
    "error-429": (429, anthropic_error("rate_limit_error", "Number of request tokens has exceeded your rate limit")),
    "error-529": (529, anthropic_error("overloaded_error", "Overloaded")),
    "error-400": (400, anthropic_error("invalid_request_error", "max_tokens: Field required")),
}


class MessagesHandler(RecordingHandler):
    """One Messages call. Subclasses say whether the caller may call, and
    where the model and stream flag are."""

    def authorized(self):
        raise NotImplementedError

    def model_and_stream(self, body, *path_args):
        return body.get("model", ""), body.get("stream") is True

    def fail(self, status, body):
        self.set_status(status)
        self.set_header("request-id", "req_fake_error")
        self.finish(body)

    async def post(self, *path_args):
        if not self.authorized():
            return
        body = json.loads(self.request.body or b"{}")
        model, stream = self.model_and_stream(body, *path_args)
        if self._finished:
            return
        if model in ERRORS:
            return self.fail(*ERRORS[model])
        message = {
            "id": "msg_fake1",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "".join(WORDS)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": self.with_test_fields(usage()),
        }
        self.set_header("request-id", "req_fake_message")
        if not stream:
            self.finish(message)
            return
        await self.stream(model, message)

    async def send(self, name, **payload):
        if self.client_gone():
            return False
        self.write(f"event: {name}\ndata: {json.dumps({'type': name, **payload})}\n\n")
        try:
            await self.flush()
        except Exception:
            return False
        return True

    async def stream(self, model, message):
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        started = {**message, "content": [], "stop_reason": None,
                   "usage": self.with_test_fields(usage(output_tokens=1))}
        if not await self.send("message_start", message=started):
            return
        await self.send("content_block_start", index=0, content_block={"type": "text", "text": ""})
        await self.send("ping")
        for i, word in enumerate(WORDS):
            if not await self.send("content_block_delta", index=0, delta={"type": "text_delta", "text": word}):
                return
            if i == 0 and model == "silent-stream":
                await self.sleep_unless_closed(30)
                return
            if i == 1 and model == "error-mid-stream":
                await self.send("error", error={"type": "overloaded_error", "message": "Overloaded"})
                self.finish()
                return
        await self.send("content_block_stop", index=0)
        end = {"stop_reason": "end_turn", "stop_sequence": None}
        if model == "revised-usage":
            await self.send("message_delta", delta=end, usage={"output_tokens": 5})
            revised = usage(input_tokens=REVISED_INPUT_TOKENS)
            del revised["cache_creation"], revised["service_tier"]
            await self.send("message_delta", delta=end, usage=revised)
        else:
            # The final figures: output, and the server tools' cumulative counts.
            final = {"output_tokens": OUTPUT_TOKENS, **{k: v for k, v in message["usage"].items()
                                                         if k == "server_tool_use"}}
            await self.send("message_delta", delta=end, usage=final)
        await self.send("message_stop")
        self.finish()


class CountTokensHandler(RecordingHandler):
    def authorized(self):
        raise NotImplementedError

    def post(self, *path_args):
        if self.authorized():
            self.finish({"input_tokens": COUNTED_TOKENS})


class AnthropicAuth:
    """The real API's checks: the operator's key, and a version header."""

    def authorized(self):
        if self.request.headers.get("x-api-key") != self.fake.api_key:
            self.fail(401, anthropic_error("authentication_error", "invalid x-api-key"))
            return False
        if not self.request.headers.get("anthropic-version"):
            self.fail(400, anthropic_error("invalid_request_error", "anthropic-version: header is required"))
            return False
        return True


class Messages(AnthropicAuth, MessagesHandler):
    pass


class CountTokens(AnthropicAuth, CountTokensHandler):
    fail = MessagesHandler.fail


# GET /v1/models as Anthropic answers it: newest first, paged by limit
# (default 20), after_id and before_id.
MODELS = [
    {"type": "model", "id": model, "display_name": name, "created_at": created}
    for model, name, created in [
        ("claude-opus-4-1-20250805", "Claude Opus 4.1", "2025-08-05T00:00:00Z"),
        ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
        ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-01T00:00:00Z"),
        ("claude-sonnet-4-20250514", "Claude Sonnet 4", "2025-05-14T00:00:00Z"),
        ("claude-3-5-haiku-20241022", "Claude Haiku 3.5", "2024-10-22T00:00:00Z"),
        ("claude-3-haiku-20240307", "Claude Haiku 3", "2024-03-07T00:00:00Z"),
    ]
]


class Models(AnthropicAuth, RecordingHandler):
    fail = MessagesHandler.fail

    def get(self, model=None):
        if not self.authorized():
            return
        if model is not None:
            found = [m for m in MODELS if m["id"] == model]
            if not found:
                return self.fail(404, anthropic_error("not_found_error", f"model: {model}"))
            return self.finish(found[0])
        ids = [m["id"] for m in MODELS]
        limit = int(self.get_query_argument("limit", "20"))
        after, before = self.get_query_argument("after_id", None), self.get_query_argument("before_id", None)
        if before is not None:
            end = ids.index(before)
            page = MODELS[max(end - limit, 0):end]
            more = end - limit > 0
        else:
            start = ids.index(after) + 1 if after is not None else 0
            page = MODELS[start:start + limit]
            more = start + limit < len(MODELS)
        self.finish({"data": page, "has_more": more, "first_id": page[0]["id"] if page else None,
                     "last_id": page[-1]["id"] if page else None})


class FakeAnthropic(FakeServer):
    def __init__(self, api_key="sk-ant-operator-anthropic-secret"):
        self.api_key = api_key
        super().__init__([(r"/v1/messages", Messages), (r"/v1/messages/count_tokens", CountTokens),
                          (r"/v1/models", Models), (r"/v1/models/([^/]+)", Models)])

    def kylon_env(self):
        return {"ANTHROPIC_API_KEY": self.api_key, "KYLON_ANTHROPIC_BASE_URL": self.url}

    def secrets(self):
        return {self.api_key}


def start():
    return FakeAnthropic()
