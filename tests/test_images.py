"""OpenAI images through Kylon (`/proxy/openai/v1/images/...`), with the official
`openai` SDK as the client, on SQLite and on MariaDB (the `kylon` fixture):
generations and edits, plain and streamed; edits in multipart relayed byte for
byte and in JSON; billing by tokens (GPT image models) or per image (DALL-E)."""

import os
import time
from decimal import Decimal

import httpx
import httpx2
import openai
import pytest
from openai.types import ImagesResponse

from .fakes import openai_fake as wire

OPERATOR_KEY = "sk-operator-openai-secret"
PROMPT = "A red fox in the snow"
# gpt-image-1 per 1M tokens: text input 5.00, image input 10.00, output 40.00.
GPT_IMAGE_1 = {"text": Decimal("5.00"), "image": Decimal("10.00"), "output": Decimal("40.00")}
GPT_IMAGE_1_MINI = {"text": Decimal("2.00"), "image": Decimal("2.50"), "output": Decimal("8.00")}


def cost(prices, image_input):
    return (wire.IMAGE_TEXT_TOKENS * prices["text"] + image_input * prices["image"]
            + wire.IMAGE_OUTPUT_TOKENS * prices["output"]) / 1_000_000


def png(seed, size):
    """Image-like bytes with every byte value, CR LF and dashes included."""
    block = b"\x89PNG\r\n\x1a\n" + bytes((seed + i) % 256 for i in range(256)) + b"\r\n--\r\n"
    return (block * (size // len(block) + 1))[:size]


class Capture:
    """Keeps the exact body and Content-Type the SDK sent."""

    def __init__(self):
        self.body = None
        self.content_type = None

    def __call__(self, request):
        self.body = request.read()
        self.content_type = request.headers["content-type"]


def client(kylon, key, capture=None, **kwargs):
    http_client = httpx2.Client(event_hooks={"request": [capture]}) if capture else None
    return openai.OpenAI(base_url=kylon.url + "/proxy/openai/v1", api_key=key, max_retries=0,
                         http_client=http_client, **kwargs)


def assert_operator_key_only(received, key):
    received.assert_only_operator_credential("authorization", f"Bearer {OPERATOR_KEY}")


# -- generations -------------------------------------------------------------------


def test_generate_with_gpt_image_1_is_billed_by_tokens(kylon, fake_openai, agent_key):
    agent, key = agent_key
    raw = client(kylon, key).images.with_raw_response.generate(model="gpt-image-1", prompt=PROMPT, size="1024x1024")
    images = raw.parse()
    assert images.data[0].b64_json == wire.IMAGE_B64 and images.usage.output_tokens == wire.IMAGE_OUTPUT_TOKENS
    received = fake_openai.last()
    assert received.method == "POST" and received.path == "/v1/images/generations"
    assert_operator_key_only(received, key)
    record = kylon.usage(raw.headers["x-kylon-request-id"])
    assert record["route"] == "images.generations" and record["model"] == "gpt-image-1"
    assert record["status"] == "completed" and record["stream"] is False
    assert record["input_tokens"] == wire.IMAGE_TEXT_TOKENS and record["output_tokens"] == wire.IMAGE_OUTPUT_TOKENS
    assert Decimal(record["units"]) == 0
    assert record["estimated"] is False and record["fallback_price"] is False
    assert Decimal(record["credits"]) == cost(GPT_IMAGE_1, 0)
    assert kylon.balance(agent["id"]) == Decimal("100") - cost(GPT_IMAGE_1, 0)


@pytest.mark.parametrize(
    "model, size, quality, n, price",
    [
        ("dall-e-3", "1024x1024", "standard", 1, "0.04"),
        ("dall-e-3", "1024x1024", "hd", 1, "0.08"),
        ("dall-e-3", "1792x1024", "hd", 1, "0.12"),
        ("dall-e-2", "1024x1024", None, 3, "0.02"),
        ("dall-e-2", "256x256", None, 2, "0.016"),
    ],
)
def test_dall_e_is_billed_per_image_by_size_and_quality(kylon, agent_key, model, size, quality, n, price):
    agent, key = agent_key
    extra = {"quality": quality} if quality else {}
    raw = client(kylon, key).images.with_raw_response.generate(model=model, prompt=PROMPT, size=size, n=n, **extra)
    assert len(raw.parse().data) == n
    record = kylon.usage(raw.headers["x-kylon-request-id"])
    assert record["model"] == model and record["unit"] == "images" and Decimal(record["units"]) == n
    assert record["input_tokens"] == 0 and record["output_tokens"] == 0 and record["estimated"] is False
    assert record["fallback_price"] is False
    assert Decimal(record["credits"]) == n * Decimal(price)
    assert kylon.balance(agent["id"]) == Decimal("100") - n * Decimal(price)


def test_generate_stream_is_billed_from_the_completed_event(kylon, fake_openai, agent_key):
    agent, key = agent_key
    with client(kylon, key).images.with_streaming_response.generate(
        model="gpt-image-1-mini", prompt=PROMPT, stream=True, partial_images=2
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        request_id = response.headers["x-kylon-request-id"]
        events = list(response.parse())
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert events[-1].b64_json == wire.IMAGE_B64
    assert_operator_key_only(fake_openai.last(), key)
    record = kylon.usage(request_id)
    assert record["stream"] is True and record["model"] == "gpt-image-1-mini" and record["status"] == "completed"
    assert record["output_tokens"] == wire.IMAGE_OUTPUT_TOKENS and record["estimated"] is False
    assert Decimal(record["credits"]) == cost(GPT_IMAGE_1_MINI, 0)
    assert kylon.balance(agent["id"]) == Decimal("100") - cost(GPT_IMAGE_1_MINI, 0)


def test_disconnect_mid_image_stream(kylon, fake_openai, agent_key):
    """One partial image, then the upstream goes silent and the client leaves."""
    agent, key = agent_key
    with client(kylon, key).images.with_streaming_response.generate(
        model="silent-stream", prompt=PROMPT, stream=True, partial_images=3
    ) as response:
        request_id = response.headers["x-kylon-request-id"]
        first = next(iter(response.parse()))
        assert first.type == "image_generation.partial_image"
        received = fake_openai.last()
        left_at = time.monotonic()
        response.close()
    closed_at = fake_openai.wait_closed(received, timeout=5)
    assert closed_at is not None and closed_at - left_at < 1.5
    record = kylon.usage(request_id)
    assert record["status"] == "disconnected" and record["estimated"] is True
    # The prompt's tokens, estimated, and 100 output tokens for the partial image.
    assert record["input_tokens"] == (len(PROMPT) + 3) // 4 and record["output_tokens"] == 100
    assert Decimal(record["credits"]) > 0 and record["fallback_price"] is True
    assert kylon.balance(agent["id"]) == Decimal("100") - Decimal(record["credits"])


def test_image_errors_pass_through(kylon, agent_key):
    agent, key = agent_key
    with pytest.raises(openai.RateLimitError) as err:
        client(kylon, key).images.generate(model="error-429", prompt=PROMPT)
    assert err.value.body["code"] == "rate_limit_exceeded"
    record = kylon.usage(err.value.response.headers["x-kylon-request-id"])
    assert record["status"] == "upstream_error" and record["http_status"] == 429
    with pytest.raises(openai.BadRequestError):
        client(kylon, key).images.edit(model="error-400", image=("a.png", png(1, 100), "image/png"), prompt=PROMPT)
    assert kylon.balance(agent["id"]) == Decimal("100")


# -- edits ---------------------------------------------------------------------------


def test_multipart_edit_arrives_byte_for_byte(kylon, fake_openai, agent_key):
    agent, key = agent_key
    images = [png(1, 20_000), png(2, 30_000)]
    mask = png(3, 5_000)
    capture = Capture()
    raw = client(kylon, key, capture).images.with_raw_response.edit(
        model="gpt-image-1",
        image=[("a.png", images[0], "image/png"), ("b.png", images[1], "image/png")],
        mask=("mask.png", mask, "image/png"),
        prompt=PROMPT,
        size="1024x1024",
    )
    assert raw.parse().data[0].b64_json == wire.IMAGE_B64
    received = fake_openai.last()
    assert received.path == "/v1/images/edits" and received.method == "POST"
    assert_operator_key_only(received, key)
    # Same bytes, same boundary: nothing re-encoded on the way.
    assert capture.content_type.startswith("multipart/form-data; boundary=")
    assert received.headers["content-type"] == capture.content_type
    assert received.body == capture.body
    form = fake_openai.edits[-1]
    assert form["files"]["image[]"] == images and form["files"]["mask"] == [mask]
    assert form["fields"]["prompt"] == PROMPT and form["fields"]["model"] == "gpt-image-1"

    record = kylon.usage(raw.headers["x-kylon-request-id"])
    assert record["route"] == "images.edits" and record["model"] == "gpt-image-1" and record["stream"] is False
    assert record["input_tokens"] == wire.IMAGE_TEXT_TOKENS and record["output_tokens"] == wire.IMAGE_OUTPUT_TOKENS
    assert record["unit"] == "image_input_tokens" and Decimal(record["units"]) == wire.IMAGE_INPUT_TOKENS
    assert record["estimated"] is False and record["fallback_price"] is False
    expected = cost(GPT_IMAGE_1, wire.IMAGE_INPUT_TOKENS)
    assert Decimal(record["credits"]) == expected
    assert kylon.balance(agent["id"]) == Decimal("100") - expected


def test_multipart_edit_stream(kylon, fake_openai, agent_key):
    agent, key = agent_key
    with client(kylon, key).images.with_streaming_response.edit(
        model="gpt-image-1-mini", image=("a.png", png(4, 10_000), "image/png"), prompt=PROMPT, stream=True
    ) as response:
        request_id = response.headers["x-kylon-request-id"]
        events = list(response.parse())
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert fake_openai.edits[-1]["fields"]["stream"] == "true"
    record = kylon.usage(request_id)
    assert record["stream"] is True and record["model"] == "gpt-image-1-mini"
    expected = cost(GPT_IMAGE_1_MINI, wire.IMAGE_INPUT_TOKENS)
    assert Decimal(record["credits"]) == expected and record["estimated"] is False
    assert kylon.balance(agent["id"]) == Decimal("100") - expected


def test_multipart_dall_e_2_edit_is_billed_per_image(kylon, agent_key):
    agent, key = agent_key
    raw = client(kylon, key).images.with_raw_response.edit(
        model="dall-e-2", image=("a.png", png(5, 1_000), "image/png"), prompt=PROMPT, size="512x512", n=2
    )
    assert len(raw.parse().data) == 2
    record = kylon.usage(raw.headers["x-kylon-request-id"])
    assert record["model"] == "dall-e-2" and record["unit"] == "images" and Decimal(record["units"]) == 2
    assert Decimal(record["credits"]) == 2 * Decimal("0.018")
    assert kylon.balance(agent["id"]) == Decimal("100") - 2 * Decimal("0.018")


def test_json_edit_with_image_urls(kylon, fake_openai, agent_key):
    agent, key = agent_key
    body = {
        "model": "gpt-image-1",
        "prompt": PROMPT,
        "images": [{"image_url": "https://example.com/a.png"}, {"image_url": "data:image/png;base64,iVBORw0KGgo="}],
        "mask": {"image_url": "https://example.com/mask.png"},
    }
    # The SDK's edit() sends multipart only; its generic post() sends the JSON form.
    images = client(kylon, key).post("/images/edits", body=body, cast_to=ImagesResponse)
    assert images.data[0].b64_json == wire.IMAGE_B64
    received = fake_openai.last()
    assert received.headers["content-type"] == "application/json"
    assert_operator_key_only(received, key)
    assert fake_openai.edits[-1]["fields"] == body
    [record] = kylon.usage_for_agent(agent["id"], 1)
    assert record["route"] == "images.edits" and record["model"] == "gpt-image-1"
    expected = cost(GPT_IMAGE_1, wire.IMAGE_INPUT_TOKENS)
    assert Decimal(record["credits"]) == expected
    assert kylon.balance(agent["id"]) == Decimal("100") - expected


def test_json_edit_stream(kylon, agent_key):
    agent, key = agent_key
    body = {"model": "gpt-image-1", "prompt": PROMPT, "stream": True,
            "images": [{"image_url": "https://example.com/a.png"}]}
    stream = client(kylon, key).post("/images/edits", body=body, cast_to=ImagesResponse, stream=True,
                                     stream_cls=openai.Stream[openai.types.ImageEditStreamEvent])
    events = list(stream)
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    [record] = kylon.usage_for_agent(agent["id"], 1)
    assert record["stream"] is True and record["estimated"] is False
    assert Decimal(record["credits"]) == cost(GPT_IMAGE_1, wire.IMAGE_INPUT_TOKENS)


def test_several_megabyte_multipart_edit_arrives_byte_exact(make_kylon, fake_openai):
    """A body above the session Kylon's 1 MiB limit, on a Kylon that allows 32 MiB."""
    k = make_kylon({"KYLON_MAX_BODY_BYTES": str(32 * 1024 * 1024)})
    agent, key = k.agent_with_key("10")
    images = [png(7, 3 * 1024 * 1024), os.urandom(2 * 1024 * 1024)]
    capture = Capture()
    raw = client(k, key, capture).images.with_raw_response.edit(
        model="gpt-image-1", image=[("a.png", images[0], "image/png"), ("b.png", images[1], "image/png")],
        prompt=PROMPT,
    )
    assert raw.parse().usage.output_tokens == wire.IMAGE_OUTPUT_TOKENS
    received = fake_openai.last()
    assert len(received.body) > 5 * 1024 * 1024
    assert received.headers["content-type"] == capture.content_type and received.body == capture.body
    assert fake_openai.edits[-1]["files"]["image[]"] == images
    record = k.usage(raw.headers["x-kylon-request-id"])
    assert record["model"] == "gpt-image-1" and record["status"] == "completed"
    assert Decimal(record["credits"]) == cost(GPT_IMAGE_1, wire.IMAGE_INPUT_TOKENS)


# -- large uploads stream upstream -------------------------------------------------

BOUNDARY = "kylon-test-boundary-7d3f"
STREAMS_AFTER = 256 * 1024  # proxy.STREAM_BODY_AFTER


def multipart(image, model_last=False):
    def field(name, value):
        return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()

    file = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image[]"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
    model = field("model", "gpt-image-1")
    parts = [field("prompt", PROMPT), file, model] if model_last else [model, field("prompt", PROMPT), file]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def upload(kylon, key, fake, body, chunked, then=None):
    """POST `body` in two halves; before the second, wait (up to 5 s) for the
    upstream to receive bytes. Returns (response, bytes the upstream had then)."""
    seen = []
    start = fake.edit_bytes

    def content():
        yield body[: len(body) // 2]
        deadline = time.monotonic() + 5
        while fake.edit_bytes - start < STREAMS_AFTER and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(fake.edit_bytes - start)
        if then is not None:
            then()
        yield body[len(body) // 2 :]

    headers = {"Authorization": f"Bearer {key}", "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    if not chunked:
        headers["Content-Length"] = str(len(body))
    response = httpx.post(kylon.url + "/proxy/openai/v1/images/edits", headers=headers, content=content(), timeout=30)
    return response, seen[0]


@pytest.mark.parametrize("chunked", [False, True])
def test_a_large_upload_goes_upstream_as_it_arrives(kylon, fake_openai, agent_key, chunked):
    agent, key = agent_key
    body = multipart(png(9, 900_000))
    response, upstream_had = upload(kylon, key, fake_openai, body, chunked)
    assert response.status_code == 200, response.text
    # The upstream was receiving the body while the client still held half of it.
    assert STREAMS_AFTER <= upstream_had <= len(body) // 2
    received = fake_openai.last()
    assert received.body == body
    if chunked:
        assert received.headers["transfer-encoding"] == "chunked"
    else:
        assert received.headers["content-length"] == str(len(body))
    assert_operator_key_only(received, key)
    record = kylon.usage(response.headers["x-kylon-request-id"])
    assert record["model"] == "gpt-image-1" and record["status"] == "completed"
    assert Decimal(record["credits"]) == cost(GPT_IMAGE_1, wire.IMAGE_INPUT_TOKENS)
    assert kylon.balance(agent["id"]) == Decimal("100") - cost(GPT_IMAGE_1, wire.IMAGE_INPUT_TOKENS)


def test_client_leaving_mid_upload_closes_the_upstream(kylon, fake_openai, agent_key):
    agent, key = agent_key

    def give_up():
        raise ConnectionAbortedError("the client gives up")

    with pytest.raises(ConnectionAbortedError):
        upload(kylon, key, fake_openai, multipart(png(10, 900_000)), chunked=False, then=give_up)
    received = fake_openai.last()
    assert received.path == "/v1/images/edits"
    assert fake_openai.wait_closed(received, timeout=5) is not None
    [record] = kylon.usage_for_agent(agent["id"], 1)
    assert record["status"] == "disconnected" and record["model"] == "gpt-image-1" and record["estimated"] is True
    assert kylon.balance(agent["id"]) == Decimal("100") - Decimal(record["credits"])


def test_a_model_named_after_a_large_file_is_unknown_not_guessed(kylon, fake_openai, agent_key):
    """Kylon sees the start of a streamed form only: a model field placed after
    the files is out of sight, so the call is priced at the fallback and
    flagged rather than taken for OpenAI's default (dall-e-2, billed per image)."""
    agent, key = agent_key
    body = multipart(png(11, 900_000), model_last=True)
    response, _ = upload(kylon, key, fake_openai, body, chunked=False)
    assert response.status_code == 200 and fake_openai.last().body == body
    record = kylon.usage(response.headers["x-kylon-request-id"])
    assert record["model"] == "" and record["fallback_price"] is True
    # OpenAI's fallback (o1-pro): text 150 and output 600 per 1M tokens, image input tokens at gpt-image-1's 10.00.
    expected = (wire.IMAGE_TEXT_TOKENS * 150 + wire.IMAGE_INPUT_TOKENS * 10 + wire.IMAGE_OUTPUT_TOKENS * 600) / Decimal(10**6)
    assert Decimal(record["credits"]) == expected
    assert kylon.balance(agent["id"]) == Decimal("100") - expected


def test_multipart_fields_are_read_in_place():
    from kylon.providers.openai import multipart_fields

    body = multipart(png(12, 5_000))
    assert multipart_fields(body, ("model", "prompt")) == ({"model": "gpt-image-1", "prompt": PROMPT}, True)
    # The start of a form: the fields seen so far, and not the end.
    assert multipart_fields(body[:300], ("model", "prompt")) == ({"model": "gpt-image-1", "prompt": PROMPT}, False)
    assert multipart_fields(multipart(png(12, 5_000), model_last=True)[:2000], ("model",)) == ({}, False)
    assert multipart_fields(b"not a form", ("model",)) == ({}, False)


def test_a_slow_upload_does_not_count_against_the_upstream_time_out(make_kylon, fake_openai):
    """The upstream's time to answer starts once it has the whole body."""
    k = make_kylon({"KYLON_UPSTREAM_TIMEOUT": "1"})
    agent, key = k.agent_with_key("10")
    response, _ = upload(k, key, fake_openai, multipart(png(13, 900_000)), chunked=False,
                         then=lambda: time.sleep(1.5))
    assert response.status_code == 200, response.text
    assert k.usage(response.headers["x-kylon-request-id"])["status"] == "completed"


def test_body_stream_back_pressure_and_end():
    """relay.BodyStream as libcurl reads it (its READFUNCTION), without a transfer."""
    import asyncio

    import pycurl

    from kylon.relay import BodyStream

    async def scenario():
        stream = BodyStream()
        sent = []
        stream.on_sent = lambda: sent.append(True)
        assert stream._read(10) == pycurl.READFUNC_PAUSE  # nothing yet: the upload pauses
        assert stream.feed(b"x" * BodyStream.HIGH_WATER) is None
        waiting = stream.feed(b"abc")  # above the high-water mark: the client must wait
        assert waiting is not None and not waiting.done()
        assert stream._read(BodyStream.HIGH_WATER) == b"x" * BodyStream.HIGH_WATER
        assert waiting.done()  # drained below the mark: the client goes on
        stream.put_first(b"head:")
        assert stream._read(3) == b"hea" and stream._read(100) == b"d:" and stream._read(100) == b"abc"
        assert stream._read(100) == pycurl.READFUNC_PAUSE and not sent
        stream.end()
        assert stream._read(100) == b"" and sent == [True]
        late = BodyStream()
        blocked = (late.feed(b"y" * (BodyStream.HIGH_WATER + 1)))
        late.close()  # the transfer ended: the client is let go, the rest dropped
        assert blocked.done() and late.feed(b"more") is None and late._read(10) == pycurl.READFUNC_ABORT

    asyncio.run(scenario())


def test_an_image_call_holds_its_images_not_its_upload_bytes():
    """While it runs a call holds its likely cost: for a 50 MB edit (the model
    still unknown, so the fallback price), one large image, not 13M "tokens"."""
    from kylon.billing import credits_for
    from kylon.providers.base import Exchange
    from kylon.providers.openai import provider

    edits = next(route for route in provider.routes if route.name == "images.edits")
    exchange = Exchange("req_test", edits, "/v1/images/edits", request_bytes=50 * 1024 * 1024)
    hold = credits_for(provider.hold_usage(exchange), provider.fallback_price)
    assert hold == (6240 * Decimal("600.00")) / 1_000_000 + Decimal("0.00001")
    generations = next(route for route in provider.routes if route.name == "images.generations")
    exchange = Exchange("req_test", generations, "/v1/images/generations", request_json={"n": 3})
    assert provider.hold_usage(exchange).units == 3
