"""A fake OpenAI API speaking the real wire format: chat completions and the
Responses API, plain and streamed (data-only SSE ending in [DONE] for chat,
named events ending in response.completed for Responses), the usage chunk only
when `stream_options.include_usage` asks for it, OpenAI's error bodies.

The model name picks a behaviour, so a test needs no set-up calls:
  error-429 / error-500 / error-400   answer with that HTTP error
  silent-stream      one chunk, then silence for 30 s (a disconnect test)
  held-stream        one chunk, then waits for `fake.release` before the rest
  slow-headers       no answer for 30 s (time-out and non-stream disconnect tests)
  drop-mid-stream    a few chunks, then the connection is cut without [DONE]
  no-usage-stream    a normal stream that never sends the usage chunk it was asked for
  linger-after-done  a normal stream that ends its HTTP response 3 s after [DONE]
  garbage-stream     bytes no parser likes, then [DONE]
  huge-error         HTTP 500 with a 10 MB error body
  reset-before-headers / reset-mid-stream   the connection reset (RST)
Anything else answers normally. Usage figures are fixed per call:
prompt 9 (3 cached), completion 12 (4 reasoning).

Stored responses (`store` not false, or `background`): retrieve (JSON, or
`?stream=true&starting_after=N` replaying the events after sequence number
N), cancel, delete, input items; a background response goes queued →
in_progress → completed over time (QUEUED_SECONDS, RUN_SECONDS; metadata
{"fake": "held"} holds it in progress until `fake.complete(id)`) and reports
its usage only once completed (a cancelled one: CANCELLED_OUTPUT_TOKENS of
output). Also input_tokens and compact.

Images: generations (JSON) and edits (multipart, checked strictly: the boundary
of the Content-Type is the body's own, every part well formed; or JSON with
`images: [{image_url}]`), plain or streamed (`image_generation.*` /
`image_edit.*` events). GPT image models answer base64 with usage (text 20,
image input 500 for edits, output 1056 tokens); DALL-E models answer URLs and no
usage. Each edit's parsed form is kept in `fake.edits` for the tests.

Models: `GET /v1/models` (the list, OpenAI's shape) and `/v1/models/{id}`.

A test adds usage fields the real API reports only for some calls with an
`x-fake-usage` header (JSON merged into the usage object; `x-fake-response`
into the answer, `x-fake-candidate` into Gemini's candidate): see
RecordingHandler.with_test_fields.
"""

import asyncio
import base64
import email.message
import json
import socket
import struct
import threading
import time
import uuid

import tornado.httputil
import tornado.web

from .server import FakeServer, RecordingHandler

PROMPT_TOKENS = 9
CACHED_TOKENS = 3
COMPLETION_TOKENS = 12
REASONING_TOKENS = 4
WORDS = ["Hello", " from", " the", " fake", " upstream", "!"]


def chat_usage():
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": REASONING_TOKENS, "audio_tokens": 0},
    }


def responses_usage():
    return {
        "input_tokens": PROMPT_TOKENS,
        "input_tokens_details": {"cached_tokens": CACHED_TOKENS},
        "output_tokens": COMPLETION_TOKENS,
        "output_tokens_details": {"reasoning_tokens": REASONING_TOKENS},
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    }


def openai_error(status, message, err_type, code):
    return {"error": {"message": message, "type": err_type, "param": None, "code": code}}


HUGE_ERROR_BODY = json.dumps(
    {"error": {"message": "x" * 10 * 1024 * 1024, "type": "server_error", "param": None, "code": None}}
).encode()
# Bytes no SSE parser should choke on: broken JSON, binary junk, stray fields.
GARBAGE_STREAM = (
    b"data: {not json\n\n"
    b"\x00\xff\xfe\x80 garbage without a field name\n\n"
    b"event: \xc3\x28\ndata: \xff\n\n"
    b'data: {"choices": "not a list", "usage": "nope"}\n\n'
    b"data: [DONE]\n\n"
)

ERRORS = {
    "error-429": (429, openai_error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded")),
    "error-500": (500, openai_error(500, "The server had an error", "server_error", None)),
    "error-400": (400, openai_error(400, "Invalid value for 'messages'", "invalid_request_error", "invalid_value")),
}


class OpenAIHandler(RecordingHandler):
    def body_json(self):
        return json.loads(self.request.body or b"{}")

    def check_auth(self):
        if self.request.headers.get("Authorization") != f"Bearer {self.fake.api_key}":
            self.set_status(401)
            self.finish(openai_error(401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key"))
            return False
        return True

    async def accept(self):
        """The request's JSON body, or None once answered (bad key, or a
        behaviour the model name picks)."""
        if not self.check_auth():
            return None
        body = self.body_json()
        if await self.behave(body.get("model", "")):
            return None
        return body

    async def behave(self, model):
        """Common behaviours; True when the answer has been given."""
        if model in ERRORS:
            status, body = ERRORS[model]
            self.set_status(status)
            self.set_header("x-request-id", "req_fake_error")
            self.finish(body)
            return True
        if model == "slow-headers":
            await self.sleep_unless_closed(30)
            if not self.client_gone():
                self.finish({"error": "too late"})
            return True
        if model == "huge-error":
            self.set_status(500)
            self.set_header("Content-Type", "application/json")
            self.finish(HUGE_ERROR_BODY)
            return True
        if model == "reset-before-headers":
            self.reset_connection()
            return True
        if model == "garbage-stream":
            self.start_stream()
            self.write(GARBAGE_STREAM)
            self.finish()
            return True
        if model == "reset-mid-stream":
            self.start_stream()
            await self.send(json.dumps({"id": "x", "object": "chat.completion.chunk",
                                        "choices": [{"index": 0, "delta": {"content": "Hel"}}]}))
            await asyncio.sleep(0.05)
            self.reset_connection()
            return True
        return False

    def reset_connection(self):
        """Close with a TCP reset (SO_LINGER 0), as a crashing upstream would."""
        sock = self.request.connection.stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.request.connection.stream.close()

    def start_stream(self):
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("x-request-id", "req_fake_stream")
        self.set_header("openai-processing-ms", "5")

    async def send(self, data, event=None):
        if self.client_gone():
            return False
        frame = (f"event: {event}\n" if event else "") + f"data: {data}\n\n"
        self.write(frame)
        try:
            await self.flush()
        except Exception:
            return False
        return True

    async def pause_for(self, model):
        """After the first chunk: the behaviours that hold a stream back."""
        if model == "silent-stream":
            await self.sleep_unless_closed(30)
            return False
        if model == "held-stream":
            event = self.fake.release
            while not event.is_set() and not self.client_gone():
                await asyncio.sleep(0.01)
        if model == "drop-mid-stream":
            self.request.connection.stream.close()
            return False
        return not self.client_gone()


class ChatCompletions(OpenAIHandler):
    async def post(self):
        body = await self.accept()
        if body is None:
            return
        model = body.get("model", "")
        text = "".join(WORDS)
        base = {"id": "chatcmpl-fake1", "created": int(time.time()), "model": model, "system_fingerprint": "fp_fake"}
        if not body.get("stream"):
            self.set_header("x-request-id", "req_fake_chat")
            self.finish(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text, "refusal": None},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": self.with_test_fields(chat_usage()),
                    **self.with_test_fields({"service_tier": "default"}, "x-fake-response"),
                }
            )
            return
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True
        self.start_stream()

        def chunk(delta, finish=None):
            c = {**base, "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
            if include_usage:
                c["usage"] = None
            return json.dumps(c)

        if not await self.send(chunk({"role": "assistant", "content": ""})):
            return
        for i, word in enumerate(WORDS):
            if not await self.send(chunk({"content": word})):
                return
            if i == 0 and not await self.pause_for(model):
                return
        await self.send(chunk({}, "stop"))
        if include_usage and not model.startswith("no-usage-stream"):
            await self.send(json.dumps({**base, "object": "chat.completion.chunk", "choices": [],
                                        "usage": self.with_test_fields(chat_usage()),
                                        **self.with_test_fields({"service_tier": "default"}, "x-fake-response")}))
        await self.send("[DONE]")
        if model.endswith("linger-after-done"):
            await asyncio.sleep(3)
        self.finish()


# Background responses: queued this long, then in progress until RUN_SECONDS
# after their create (or, with metadata {"fake": "held"}, until
# `fake.complete(id)`), then completed with their usage. A cancel gives
# CANCELLED_OUTPUT_TOKENS of output.
QUEUED_SECONDS = 0.2
RUN_SECONDS = 0.6
CANCELLED_OUTPUT_TOKENS = 2
TERMINAL = ("completed", "failed", "cancelled", "incomplete")


class StoredResponse:
    """A response the fake keeps (store not false): its final form, and for
    a background one where it is on its way there."""

    def __init__(self, response, background, held, request):
        self.final = response
        self.background = background
        self.held = held
        self.request = request
        self.created = time.monotonic()
        self.cancelled = False

    @property
    def status(self):
        if not self.background:
            return self.final["status"]
        if self.cancelled:
            return "cancelled"
        age = time.monotonic() - self.created
        if age < QUEUED_SECONDS:
            return "queued"
        if self.held or age < RUN_SECONDS:
            return "in_progress"
        return "completed"

    def current(self):
        """The response as a retrieve shows it now: usage only once it ended."""
        status = self.status
        if status == "completed":
            return self.final
        if status == "cancelled":
            usage = {**responses_usage(), "output_tokens": CANCELLED_OUTPUT_TOKENS,
                     "output_tokens_details": {"reasoning_tokens": 0},
                     "total_tokens": PROMPT_TOKENS + CANCELLED_OUTPUT_TOKENS}
            return {**self.final, "status": "cancelled", "output": [], "usage": usage}
        return {**self.final, "status": status, "output": [], "usage": None}

    def events(self):
        """The response's stream events as (name, payload), sequence numbers
        being their indexes; the last one, its end, once it has ended."""
        response, text = self.final, "".join(WORDS)
        first = {**response, "status": "queued" if self.background else "in_progress", "output": [], "usage": None}
        running = {**first, "status": "in_progress"}
        item = {"type": "message", "id": "msg_fake1", "status": "in_progress", "role": "assistant", "content": []}
        at = {"item_id": "msg_fake1", "output_index": 0, "content_index": 0}
        events = [("response.created", {"response": first}), ("response.in_progress", {"response": running}),
                  ("response.output_item.added", {"output_index": 0, "item": item}),
                  ("response.content_part.added", {**at, "part": {"type": "output_text", "text": "",
                                                                  "annotations": []}})]
        events += [("response.output_text.delta", {**at, "delta": word}) for word in WORDS]
        events += [("response.output_text.done", {**at, "text": text}),
                   ("response.content_part.done", {**at, "part": {"type": "output_text", "text": text,
                                                                  "annotations": []}}),
                   ("response.output_item.done", {"output_index": 0, "item": response["output"][0]}),
                   ("response.completed", {"response": response})]
        return events


class ResponsesHandler(OpenAIHandler):
    async def send_event(self, sequence, name, payload):
        return await self.send(json.dumps({"type": name, "sequence_number": sequence, **payload}), event=name)

    async def stream_stored(self, stored, starting_after=-1):
        """A background response's events after `starting_after`, the rest as it
        gets on: the deltas wait for it to end (a cancelled one ends there)."""
        self.start_stream()
        for sequence, (name, payload) in enumerate(stored.events()):
            if sequence <= starting_after:
                continue
            if name == "response.output_text.delta":
                while stored.status not in TERMINAL and not self.client_gone():
                    await asyncio.sleep(0.01)
                if stored.status != "completed":
                    break
            if not await self.send_event(sequence, name, payload):
                return
        self.finish()

    def stored(self, response_id):
        """The stored response, or None after answering 404 as OpenAI does."""
        stored = self.fake.responses.get(response_id)
        if stored is None:
            self.set_status(404)
            self.finish(openai_error(404, f"Response with id '{response_id}' not found.",
                                     "invalid_request_error", None))
        return stored


class Responses(ResponsesHandler):
    async def post(self):
        body = await self.accept()
        if body is None:
            return
        model = body.get("model", "")
        text = "".join(WORDS)
        self.fake.response_count += 1
        response_id = f"resp_fake{self.fake.response_count}_{uuid.uuid4().hex[:12]}"
        response = {
            "id": response_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": model,
            "output": [
                {
                    "type": "message",
                    "id": "msg_fake1",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": self.with_test_fields(responses_usage()),
            "error": None,
            "incomplete_details": None,
            "background": body.get("background") is True,
        }
        response = self.with_test_fields(response, "x-fake-response")
        background = body.get("background") is True
        stored = StoredResponse(response, background, (body.get("metadata") or {}).get("fake") == "held", body)
        if body.get("store") is not False or background:
            self.fake.responses[response_id] = stored
        if background:
            if body.get("stream"):
                return await self.stream_stored(stored)
            return self.finish(stored.current())
        if not body.get("stream"):
            self.finish(response)
            return
        self.start_stream()
        for sequence, (name, payload) in enumerate(stored.events()):
            if not await self.send_event(sequence, name, payload):
                return
            if payload.get("delta") == WORDS[0] and not await self.pause_for(model):
                return
        self.finish()


class ResponseById(ResponsesHandler):
    async def get(self, response_id):
        if not self.check_auth() or (stored := self.stored(response_id)) is None:
            return
        if self.get_argument("stream", "") == "true":
            return await self.stream_stored(stored, int(self.get_argument("starting_after", "-1")))
        self.finish(stored.current())

    def delete(self, response_id):
        if not self.check_auth() or self.stored(response_id) is None:
            return
        del self.fake.responses[response_id]
        self.finish({"id": response_id, "object": "response", "deleted": True})


class ResponseCancel(ResponsesHandler):
    def post(self, response_id):
        if not self.check_auth() or (stored := self.stored(response_id)) is None:
            return
        if not stored.background:
            self.set_status(400)
            return self.finish(openai_error(400, "Only responses created with background=true can be cancelled.",
                                            "invalid_request_error", None))
        if stored.status not in TERMINAL:
            stored.cancelled = True
        self.finish(stored.current())


class ResponseInputItems(ResponsesHandler):
    def get(self, response_id):
        if not self.check_auth() or (stored := self.stored(response_id)) is None:
            return
        given = stored.request.get("input")
        items = given if isinstance(given, list) else [{"role": "user", "content": given}]
        data = [{"type": "message", "id": f"msg_in{i}", "status": "completed", "role": item.get("role", "user"),
                 "content": [{"type": "input_text", "text": item.get("content")}]} for i, item in enumerate(items)]
        self.finish({"object": "list", "data": data, "first_id": data[0]["id"], "last_id": data[-1]["id"],
                     "has_more": False})


class InputTokens(OpenAIHandler):
    async def post(self):
        if await self.accept() is not None:
            self.finish({"object": "response.input_tokens", "input_tokens": PROMPT_TOKENS})


class Compact(OpenAIHandler):
    async def post(self):
        if await self.accept() is not None:
            self.finish({"id": f"cmp_fake_{uuid.uuid4().hex[:12]}", "object": "response.compaction",
                         "created_at": int(time.time()), "output": [], "usage": responses_usage()})


# -- images --------------------------------------------------------------------

IMAGE_TEXT_TOKENS = 20
IMAGE_INPUT_TOKENS = 500  # edits only: the input images
IMAGE_OUTPUT_TOKENS = 1056
# A small "PNG" holding every byte value, CR LF and dashes included.
IMAGE_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4).decode()


def image_usage(edit):
    image_input = IMAGE_INPUT_TOKENS if edit else 0
    return {
        "input_tokens": IMAGE_TEXT_TOKENS + image_input,
        "input_tokens_details": {"text_tokens": IMAGE_TEXT_TOKENS, "image_tokens": image_input},
        "output_tokens": IMAGE_OUTPUT_TOKENS,
        "total_tokens": IMAGE_TEXT_TOKENS + image_input + IMAGE_OUTPUT_TOKENS,
    }


class ImagesHandler(OpenAIHandler):
    kind = "image_generation"

    async def answer(self, fields):
        """The images answer for the request's fields (JSON values or form strings)."""
        model = fields.get("model") or "dall-e-2"
        if await self.behave(model):
            return
        edit = self.kind == "image_edit"
        n = int(fields.get("n") or 1)
        if fields.get("stream") in (True, "true"):
            await self.stream_images(model, fields, edit)
            return
        if model.startswith("dall-e"):
            data = [{"url": f"https://images.fake/{i}.png", "revised_prompt": fields.get("prompt")} for i in range(n)]
            self.finish({"created": int(time.time()), "data": data})
            return
        self.finish({"created": int(time.time()), "data": [{"b64_json": IMAGE_B64} for _ in range(n)],
                     "background": "opaque", "output_format": "png", "quality": "high",
                     "size": fields.get("size") or "1024x1024", "usage": self.with_test_fields(image_usage(edit))})

    async def stream_images(self, model, fields, edit):
        self.start_stream()
        common = {"created_at": int(time.time()), "size": fields.get("size") or "1024x1024", "quality": "high",
                  "background": "opaque", "output_format": "png"}
        for i in range(int(fields.get("partial_images") or 1)):
            name = f"{self.kind}.partial_image"
            if not await self.send(json.dumps({"type": name, "b64_json": IMAGE_B64, "partial_image_index": i,
                                               **common}), event=name):
                return
            if i == 0 and not await self.pause_for(model):
                return
        name = f"{self.kind}.completed"
        await self.send(json.dumps({"type": name, "b64_json": IMAGE_B64, **common,
                                    "usage": self.with_test_fields(image_usage(edit))}),
                        event=name)
        self.finish()


class ImageGenerations(ImagesHandler):
    async def post(self):
        if self.check_auth():
            await self.answer(self.body_json())


@tornado.web.stream_request_body
class ImageEdits(ImagesHandler):
    """Reads its body as it arrives, counting the bytes in `fake.edit_bytes`, so
    a test can see an upload reach the upstream before the client has sent it all."""

    kind = "image_edit"

    def prepare(self):
        super().prepare()
        self.chunks = []

    def data_received(self, chunk):
        self.chunks.append(chunk)
        self.fake.edit_bytes += len(chunk)

    async def post(self):
        self.request.body = self.received.body = b"".join(self.chunks)
        if not self.check_auth():
            return
        content_type = self.request.headers.get("Content-Type", "")
        if content_type.startswith("application/json"):
            body = self.body_json()
            images = body.get("images")
            if not (isinstance(images, list) and images and all("image_url" in i or "file_id" in i for i in images)):
                return self.invalid("'images' must be a list of {image_url} or {file_id}.")
            self.fake.edits.append({"content_type": content_type, "fields": body, "files": {}})
            return await self.answer(body)
        form = self.strict_multipart(content_type, self.request.body)
        if form is None:
            return
        fields, files = form
        if not fields.get("prompt") or not (files.get("image[]") or files.get("image")):
            return self.invalid("An edit needs a prompt and at least one image.")
        self.fake.edits.append({"content_type": content_type, "fields": fields, "files": files})
        await self.answer(fields)

    def strict_multipart(self, content_type, body):
        """(fields, files) of a multipart body whose boundary is the one its
        Content-Type announces, or None after answering 400."""
        header = email.message.Message()
        header["Content-Type"] = content_type
        boundary = (header.get_param("boundary") or "").encode("latin1")
        if header.get_content_type() != "multipart/form-data" or not boundary:
            return self.invalid(f"Unsupported Content-Type {content_type!r}.")
        if not body.startswith(b"--" + boundary + b"\r\n") or not body.endswith(b"\r\n--" + boundary + b"--\r\n"):
            return self.invalid("The body does not use the boundary of its Content-Type.")
        arguments, files = {}, {}
        tornado.httputil.parse_multipart_form_data(boundary, body, arguments, files)
        parts = body.count(b"\r\n--" + boundary)  # each part ends at one, the closing one included
        if sum(map(len, arguments.values())) + sum(map(len, files.values())) != parts:
            return self.invalid("A multipart part is malformed.")
        return ({k: v[-1].decode() for k, v in arguments.items()},
                {k: [f["body"] for f in v] for k, v in files.items()})

    def invalid(self, message):
        self.set_status(400)
        self.finish(openai_error(400, message, "invalid_request_error", "invalid_value"))
        return None


# GET /v1/models as OpenAI answers it.
MODELS = [
    {"id": model, "object": "model", "created": 1715367049 + i, "owned_by": "system"}
    for i, model in enumerate(["gpt-4o-mini", "gpt-4o", "gpt-5", "gpt-5-mini", "o3", "dall-e-3", "gpt-image-1"])
]


class Models(OpenAIHandler):
    def get(self, model=None):
        if not self.check_auth():
            return
        if model is None:
            return self.finish({"object": "list", "data": MODELS})
        found = [m for m in MODELS if m["id"] == model]
        if not found:
            self.set_status(404)
            return self.finish(openai_error(404, f"The model '{model}' does not exist or you do not have access "
                                                 "to it.", "invalid_request_error", "model_not_found"))
        self.finish(found[0])


class FakeOpenAI(FakeServer):
    def __init__(self, api_key="sk-operator-openai-secret"):
        self.api_key = api_key
        self.release = threading.Event()
        self.edits = []
        self.edit_bytes = 0
        self.responses = {}  # id -> StoredResponse
        self.response_count = 0
        super().__init__([(r"/v1/chat/completions", ChatCompletions), (r"/v1/responses", Responses),
                          (r"/v1/responses/input_tokens", InputTokens), (r"/v1/responses/compact", Compact),
                          (r"/v1/responses/([^/]+)/cancel", ResponseCancel),
                          (r"/v1/responses/([^/]+)/input_items", ResponseInputItems),
                          (r"/v1/responses/([^/]+)", ResponseById),
                          (r"/v1/images/generations", ImageGenerations), (r"/v1/images/edits", ImageEdits),
                          (r"/v1/models", Models), (r"/v1/models/([^/]+)", Models)])

    def complete(self, response_id):
        """A held background response completes now."""
        self.responses[response_id].held = False

    def polls(self, response_id):
        """The reads of a response upstream (Kylon's polls and relayed retrieves)."""
        return sum(1 for r in self.received if r.method == "GET" and r.path == f"/v1/responses/{response_id}")

    def kylon_env(self):
        return {"OPENAI_API_KEY": self.api_key, "KYLON_OPENAI_BASE_URL": self.url}

    def secrets(self):
        return {self.api_key}


def start():
    return FakeOpenAI()
