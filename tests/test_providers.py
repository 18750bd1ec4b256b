"""The provider API directly, without a server: each provider's error body,
body checks, hold, request-id headers and secret query names, and the per-route
hooks (prepare, hold, usage_from_headers, free) the base Provider calls."""

import asyncio
import json
from decimal import Decimal

import pytest

from kylon.accesslog import DEFAULT_SECRET_PARAMS, AccessLog
from kylon.billing import Usage
from kylon.handlers.base import BaseHandler
from kylon.meter import ResponseMeter
from kylon.providers import load_providers, secret_query_params
from kylon.providers.base import Exchange, Provider, Route
from kylon.providers.elevenlabs import read_tts_request, read_tts_stream_request
from kylon.providers.openai import HOLD_IMAGE_OUTPUT_TOKENS

ENV = {"KYLON_VERTEX_PROJECT": "p", "KYLON_VERTEX_ACCESS_TOKEN": "t"}
PROVIDERS = load_providers(ENV)


@pytest.fixture(autouse=True)
def configured():
    # The provider instances are the modules' own: other tests configure them too.
    PROVIDERS.update(load_providers(ENV))


def route(provider, name):
    return next(r for r in PROVIDERS[provider].routes if r.name == name)


def exchange(provider, route_name=None, path="/v1/x", **fields):
    found = route(provider, route_name) if route_name else None
    return Exchange("req_test", found, path, **fields)


# -- error bodies ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["openai", "cerebras", "openrouter"])
def test_openai_shaped_providers_answer_openai_errors(name):
    assert PROVIDERS[name].error_body(402, "Out of credits.") == {
        "error": {"message": "Out of credits.", "type": "insufficient_quota", "param": None,
                  "code": "insufficient_credits"}
    }
    assert PROVIDERS[name].error_body(403, "No.", code="custom")["error"]["code"] == "custom"


@pytest.mark.parametrize("name", ["anthropic", "anthropic-vertex"])
def test_anthropic_errors(name):
    body = PROVIDERS[name].error_body(402, "Out of credits.")
    assert body == {"type": "error", "error": {"type": "billing_error", "message": "Out of credits."}}
    assert PROVIDERS[name].error_body(504, "slow")["error"]["type"] == "timeout_error"
    assert PROVIDERS[name].error_body(418, "odd")["error"]["type"] == "api_error"


def test_gemini_errors():
    assert PROVIDERS["gemini"].error_body(429, "Slow down.") == {
        "error": {"code": 429, "message": "Slow down.", "status": "RESOURCE_EXHAUSTED"}
    }
    assert PROVIDERS["gemini"].error_body(418, "odd")["error"]["status"] == "UNKNOWN"


def test_elevenlabs_errors():
    provider = PROVIDERS["elevenlabs"]
    assert provider.error_body(403, "No skill.") == {"detail": {"status": "missing_skill", "message": "No skill."}}
    assert provider.error_body(400, "Bad.", code="bad_text")["detail"]["status"] == "bad_text"


def test_kylon_own_routes_answer_openai_errors():
    assert BaseHandler.error_body(None, 404, "No such route: /x")["error"]["code"] == "not_found"


# -- request checks and holds -------------------------------------------------------


def test_body_problem_names_the_field_and_its_type():
    openai = PROVIDERS["openai"]
    assert openai.body_problem({"model": "gpt-4o", "stream": True, "max_tokens": 5}) is None
    assert openai.body_problem({"model": 4}) == "'model' must be a string."
    assert openai.body_problem({"stream": "yes"}) == "'stream' must be true or false."
    assert openai.body_problem({"max_tokens": True}) == "'max_tokens' must be an integer."
    assert openai.body_problem({"max_completion_tokens": "9"}) == "'max_completion_tokens' must be an integer."
    assert openai.body_problem({"model": 4, "stream": "x"}) == "'model' must be a string."
    # OpenAI's own field names are checked only where OpenAI's API is spoken.
    assert PROVIDERS["anthropic"].body_problem({"max_output_tokens": "9"}) is None
    assert PROVIDERS["cerebras"].body_problem({"max_output_tokens": "9"}) == "'max_output_tokens' must be an integer."


def test_the_hold_caps_output_by_each_providers_own_field():
    body = {"max_tokens": 7, "max_completion_tokens": 9, "generationConfig": {"maxOutputTokens": 11}}
    held = {name: PROVIDERS[name].hold_usage(exchange(name, request_json=body, request_bytes=400)).output_tokens
            for name in ("openai", "anthropic", "gemini")}
    assert held == {"openai": 9, "anthropic": 7, "gemini": 11}
    plain = PROVIDERS["gemini"].hold_usage(exchange("gemini", request_json={}, request_bytes=400))
    assert plain.output_tokens == Provider.default_hold_output_tokens and plain.input_tokens == 100


def test_an_image_call_holds_per_image_by_its_route():
    openai = PROVIDERS["openai"]
    call = exchange("openai", "images.generations", request_json={"n": 3, "max_tokens": 5}, request_bytes=10**8)
    assert openai.hold_usage(call) == Usage(output_tokens=3 * HOLD_IMAGE_OUTPUT_TOKENS, units=Decimal(3))
    # On a chat call, `n` answers of at most max_tokens each.
    chat = exchange("openai", "chat.completions", request_json={"n": 3, "max_tokens": 5}, request_bytes=40)
    assert openai.hold_usage(chat) == Usage(input_tokens=10, output_tokens=15, units=Decimal(1))
    chat = exchange("openai", "chat.completions", request_json={"n": 2}, request_bytes=40)
    assert openai.hold_usage(chat).output_tokens == 2 * openai.default_hold_output_tokens


def test_an_image_edit_is_read_by_its_route_prepare_and_sent_as_it_came():
    form = (b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ndall-e-2\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"size\"\r\n\r\n512x512\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\nPNG\r\n--b--\r\n")
    call = exchange("openai", "images.edits", request_bytes=len(form))
    assert PROVIDERS["openai"].prepare_request(call, form) is form
    assert call.model == "dall-e-2" and call.price_model == "dall-e-2 512x512"
    # Other routes' bodies are left alone.
    chat = exchange("openai", "chat.completions")
    assert PROVIDERS["openai"].prepare_request(chat, b"{}") == b"{}" and chat.model == ""


# -- free calls -------------------------------------------------------------------


@pytest.mark.parametrize("name, route_name", [("cerebras", "tcp_warming"), ("gemini", "countTokens"),
                                              ("gemini", "files.upload")])
def test_a_free_route_is_final_at_zero_and_holds_nothing(name, route_name):
    call = exchange(name, route_name, request_bytes=50 * 1024 * 1024)
    PROVIDERS[name].prepare_request(call, b"x")
    assert call.usage == Usage() and call.usage_final
    assert PROVIDERS[name].hold_usage(call) == Usage()


def test_a_paid_route_is_not_free():
    call = exchange("cerebras", "chat.completions", request_json={}, request_bytes=40)
    PROVIDERS["cerebras"].prepare_request(call, b"{}")
    assert call.usage is None and not call.usage_final
    assert PROVIDERS["cerebras"].hold_usage(call).output_tokens == Provider.default_hold_output_tokens


def test_gemini_passthrough_calls_without_model_or_body_are_free():
    gemini = PROVIDERS["gemini"]
    listing = exchange("gemini", path="/v1beta/files")
    asyncio.run(gemini.ready(listing))
    assert listing.usage_final and listing.usage == Usage()
    posted = exchange("gemini", path="/v1beta/cachedContents", request_bytes=10)
    asyncio.run(gemini.ready(posted))
    assert not posted.usage_final


def test_a_routes_usage_from_headers_hook_is_called():
    hook = Route(r"/v1/speak", "speak", usage_from_headers=lambda ex, headers: Usage(units=Decimal(headers["n"])))
    provider = Provider()
    assert provider.usage_from_headers(Exchange("r", hook, "/v1/speak"), {"n": "4"}).units == 4
    assert provider.usage_from_headers(Exchange("r", Route(r"/v1/x", "x"), "/v1/x"), {"n": "4"}) is None
    assert provider.usage_from_headers(Exchange("r", None, "/v1/y"), {"n": "4"}) is None


# -- per-route request shaping ----------------------------------------------------------


def test_text_to_speech_streams_by_its_path():
    plain, streamed = exchange("elevenlabs", stream=True), exchange("elevenlabs")
    read_tts_request(plain, {"model_id": "eleven_v3", "stream": True})
    read_tts_stream_request(streamed, {})
    assert (plain.model, plain.stream) == ("eleven_v3", False)
    assert (streamed.model, streamed.stream) == ("eleven_multilingual_v2", True)


def test_vertex_puts_the_model_in_the_url_for_messages_only():
    vertex = PROVIDERS["anthropic-vertex"]
    for route_name, model, url_end in [("messages", "claude-sonnet-4-5@20250929",
                                        "/models/claude-sonnet-4-5@20250929:rawPredict"),
                                       ("messages.count_tokens", "claude-sonnet-4-5@20250929",
                                        "/models/count-tokens:rawPredict")]:
        call = exchange("anthropic-vertex", route_name, model=model)
        body = {"model": model}
        assert route(vertex.name, route_name).rewrite(call, body)
        assert ("model" in body) == (route_name == "messages.count_tokens")
        assert body["anthropic_version"] == "vertex-2023-10-16"
        assert vertex.upstream_url(call).endswith(url_end)
    bad = exchange("anthropic-vertex", "messages", model="a/b")
    assert asyncio.run(vertex.ready(bad))[0] == 400
    assert asyncio.run(vertex.ready(exchange("anthropic-vertex", "messages.count_tokens", model="a/b"))) is None


def test_an_exchange_upstream_url_replaces_base_and_path():
    gemini = PROVIDERS["gemini"]
    call = exchange("gemini", "files.upload", path="/upload/v1beta/files", query="upload_id=x")
    assert gemini.upstream_url(call) == gemini.base_url + "/upload/v1beta/files?upload_id=x"
    call.upstream_url = "https://upload.example/session/1"
    assert gemini.upstream_url(call) == "https://upload.example/session/1"


# -- reading answers ---------------------------------------------------------------------


def metered(call, answer):
    meter = ResponseMeter(call)
    meter.on_headers(200, {"Content-Type": "application/json"})
    meter.feed(json.dumps(answer).encode())
    meter.close()
    return call.usage


def test_gemini_reads_a_whole_stream_answered_as_a_json_array():
    chunks = [{"candidates": [], "usageMetadata": {"promptTokenCount": 5}},
              {"usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 8, "thoughtsTokenCount": 2}}]
    usage = metered(exchange("gemini", "streamGenerateContent"), chunks)
    assert (usage.input_tokens, usage.output_tokens, usage.reasoning_tokens) == (5, 10, 2)
    assert metered(exchange("gemini", "generateContent"), []) is None


def test_other_readers_ignore_answers_that_are_not_objects():
    usage = {"usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    assert metered(exchange("openai", "chat.completions"), [usage]) is None
    assert metered(exchange("openai", "chat.completions"), usage).output_tokens == 4
    assert metered(exchange("anthropic", "messages"), ["x"]) is None
    assert metered(exchange("openai", "images.generations"), "done") is None


# -- identifiers and secrets ----------------------------------------------------------------


def test_each_provider_names_its_request_id_headers():
    headers = {name: provider.upstream_id_headers for name, provider in PROVIDERS.items()}
    assert headers["openai"] == headers["cerebras"] == ("x-request-id",)
    assert headers["anthropic"] == headers["elevenlabs"] == ("request-id",)
    assert headers["openrouter"][0] == "x-generation-id" and headers["gemini"] == ("x-goog-request-id",)


def test_secret_query_names_come_from_the_providers():
    names = secret_query_params(PROVIDERS)
    assert set(names) == set(DEFAULT_SECRET_PARAMS)
    assert "upload_id" not in secret_query_params({"openai": PROVIDERS["openai"]})
    log = AccessLog(secret_params=("sig",))
    assert log.redact("/x?sig=abc&key=k") == "/x?sig=[redacted]&key=k"
    assert AccessLog().redact("/u?upload_id=kus_1&alt=sse") == "/u?upload_id=[redacted]&alt=sse"


# -- holds count every multiplier (issue 15) -------------------------------------------


def test_an_image_call_holds_every_image_it_asks_for():
    openai = PROVIDERS["openai"]
    call = exchange("openai", "images.generations", request_json={"n": 1_000_000})
    assert openai.hold_usage(call).units == 1_000_000
    for n, held in [(0, 1), (-3, 1), ("7", 7), ("x", 1), (True, 1), ("9" * 30, 10**8), (10**30, 10**8)]:
        assert openai.hold_usage(exchange("openai", "images.generations", request_json={"n": n})).units == held
    form = (b"--b\r\nContent-Disposition: form-data; name=\"n\"\r\n\r\n40\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\nPNG\r\n--b--\r\n")
    edit = exchange("openai", "images.edits", request_bytes=len(form))
    openai.prepare_request(edit, form)
    assert openai.hold_usage(edit) == Usage(output_tokens=40 * HOLD_IMAGE_OUTPUT_TOKENS, units=Decimal(40))
    edit = exchange("openai", "images.edits")
    openai.prepare_request(edit, b'{"model": "gpt-image-1", "n": 3, "images": []}')
    assert openai.hold_usage(edit).units == 3


def test_gemini_holds_every_candidate():
    gemini = PROVIDERS["gemini"]

    def held(config):
        return gemini.hold_usage(exchange("gemini", request_json={"generationConfig": config})).output_tokens

    assert held({"maxOutputTokens": 100, "candidateCount": 8}) == 800
    assert held({"candidateCount": 2}) == 2 * Provider.default_hold_output_tokens
    assert held({"maxOutputTokens": 100}) == 100 and held({"maxOutputTokens": 100, "candidateCount": 1}) == 100


def test_elevenlabs_holds_the_texts_characters():
    elevenlabs = PROVIDERS["elevenlabs"]
    call = exchange("elevenlabs", "text_to_speech", request_json={"text": "x" * 5000})
    assert elevenlabs.hold_usage(call) == Usage(unit="characters", units=Decimal(5000))
    assert elevenlabs.hold_usage(exchange("elevenlabs", "text_to_speech", request_json={"text": 5})).units == 0


@pytest.mark.parametrize("name, body, problem", [
    ("openai", {"max_tokens": 10**27}, "'max_tokens' must be between 0 and 100000000."),
    ("openai", {"max_completion_tokens": -1}, "'max_completion_tokens' must be between 0 and 100000000."),
    ("openai", {"n": 0}, "'n' must be between 1 and 100000000."),
    ("openai", {"n": "3"}, "'n' must be an integer."),
    ("anthropic", {"max_tokens": 10**8 + 1}, "'max_tokens' must be between 0 and 100000000."),
    ("gemini", {"generationConfig": {"maxOutputTokens": 10**27}},
     "'generationConfig.maxOutputTokens' must be between 0 and 100000000."),
    ("gemini", {"generationConfig": {"candidateCount": 1.5}}, "'generationConfig.candidateCount' must be an integer."),
    ("gemini", {"generationConfig": []}, "'generationConfig' must be an object."),
    ("openai", {"max_tokens": 10**8, "n": 10**8}, None),
    ("gemini", {"generationConfig": {"maxOutputTokens": 0, "candidateCount": 8}}, None),
])
def test_token_limits_and_counts_outside_any_providers_range_are_refused(name, body, problem):
    assert PROVIDERS[name].body_problem(body) == problem
