"""Every billable usage field, through the official SDKs, billed to the last
decimal as genai-prices prices the same usage (its own extraction and price
calculation, a development dependency): audio tokens, 1-hour cache writes,
web searches, prompts above 200k tokens, a priority tier, text and image
output of image models, Gemini's modalities and search grounding.

The fakes report the extra usage fields a test names in `x-fake-usage` (and
top-level answer fields in `x-fake-response`, Gemini candidate fields in
`x-fake-candidate`), in each API's own wire format."""

import json
from decimal import Decimal

import anthropic
import genai_prices
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from kylon.models import NANO_QUANTUM

from .fakes import gemini_fake
from .fakes.server import merged


def reference(body, provider, flavor="default", model=None, context=None, **more):
    """genai-prices' figure for an answer body, in credits as Kylon records them."""
    extracted = genai_prices.extract_usage(body, provider_id=provider, api_flavor=flavor)
    usage = extracted.usage
    for key, value in more.items():
        setattr(usage, key, value)
    model_ref = model or extracted.model.id
    price = genai_prices.calc_price(usage, model_ref, provider_id=provider, price_context=context)
    return price.total_price.quantize(NANO_QUANTUM)


def fake_headers(usage=None, response=None, candidate=None):
    headers = {}
    for name, value in (("x-fake-usage", usage), ("x-fake-response", response), ("x-fake-candidate", candidate)):
        if value is not None:
            headers[name] = json.dumps(value)
    return headers


def billed(kylon, agent, request_id):
    record = kylon.usage(request_id)
    assert record["status"] == "completed" and record["fallback_price"] is False
    assert kylon.balance(agent["id"]) == Decimal("100") - Decimal(record["credits"])
    return record, Decimal(record["credits"])


# -- OpenAI --------------------------------------------------------------------


def openai_client(kylon, key):
    return openai.OpenAI(base_url=kylon.url + "/proxy/openai/v1", api_key=key, max_retries=0)


def chat(kylon, key, model, **headers):
    raw = openai_client(kylon, key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], extra_headers=fake_headers(**headers))
    return raw, raw.http_response.json()


def test_openai_audio_input_and_output_tokens(kylon, agent_key):
    agent, key = agent_key
    usage = {"prompt_tokens_details": {"audio_tokens": 5}, "completion_tokens_details": {"audio_tokens": 7}}
    raw, body = chat(kylon, key, "gpt-audio", usage=usage)
    assert raw.parse().usage.prompt_tokens_details.audio_tokens == 5
    record, credits = billed(kylon, agent, raw.headers["x-kylon-request-id"])
    assert credits == reference(body, "openai", "chat")
    # Audio costs more than text: the same call read as all text is cheaper.
    assert credits > reference({**body, "usage": merged(body["usage"], {
        "prompt_tokens_details": {"audio_tokens": 0}, "completion_tokens_details": {"audio_tokens": 0}})},
        "openai", "chat")


def test_openai_priority_tier_from_the_answer(kylon, agent_key):
    agent, key = agent_key
    raw, body = chat(kylon, key, "gpt-5.5", response={"service_tier": "priority"})
    assert body["service_tier"] == "priority"
    _, credits = billed(kylon, agent, raw.headers["x-kylon-request-id"])
    assert credits == reference(body, "openai", "chat", context={"service_tier": "priority"})
    assert credits > reference(body, "openai", "chat")


def test_openai_prompt_above_272k_tokens_pays_the_long_context_tier(kylon, agent_key):
    agent, key = agent_key
    raw, body = chat(kylon, key, "gpt-5.5", usage={"prompt_tokens": 300_000})
    _, credits = billed(kylon, agent, raw.headers["x-kylon-request-id"])
    assert credits == reference(body, "openai", "chat")
    assert credits > 300_000 * Decimal(5) / 1_000_000  # more than the base input rate


def test_openai_responses_web_search_calls(kylon, agent_key):
    agent, key = agent_key
    searches = [{"type": "web_search_call", "id": f"ws_{i}", "status": "completed"} for i in range(2)]
    raw = openai_client(kylon, key).responses.with_raw_response.create(
        model="gpt-5", input="hi", extra_headers=fake_headers(response={"output": searches}))
    body = raw.http_response.json()
    _, credits = billed(kylon, agent, raw.headers["x-kylon-request-id"])
    assert credits == reference(body, "openai", "responses", web_searches=2)


def test_gpt_image_text_and_image_output(kylon, agent_key):
    agent, key = agent_key
    usage = {"output_tokens_details": {"text_tokens": 56, "image_tokens": 1000}}
    raw = openai_client(kylon, key).images.with_raw_response.generate(
        model="gpt-image-1.5", prompt="a fox", extra_headers=fake_headers(usage=usage))
    body = raw.http_response.json()
    _, credits = billed(kylon, agent, raw.headers["x-kylon-request-id"])
    assert credits == reference(body, "openai", "images", model="gpt-image-1.5")


# -- Anthropic -------------------------------------------------------------------


def claude(kylon, key, model="claude-sonnet-4-5", usage=None):
    client = anthropic.Anthropic(base_url=kylon.url + "/proxy/anthropic", api_key=key, max_retries=0)
    raw = client.messages.with_raw_response.create(
        model=model, max_tokens=256, messages=[{"role": "user", "content": "hi"}],
        extra_headers=fake_headers(usage=usage))
    return raw, raw.http_response.json()


def test_anthropic_one_hour_cache_writes(kylon, agent_key):
    agent, key = agent_key
    usage = {"cache_creation": {"ephemeral_5m_input_tokens": 5, "ephemeral_1h_input_tokens": 15}}
    raw, body = claude(kylon, key, usage=usage)
    record, credits = billed(kylon, agent, raw.headers["x-kylon-request-id"])
    assert record["cache_write_tokens"] == 20
    assert credits == reference(body, "anthropic")


def test_anthropic_web_searches_and_fetches(kylon, agent_key):
    agent, key = agent_key
    usage = {"server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 2}}
    raw, body = claude(kylon, key, model="claude-opus-4-8", usage=usage)
    _, credits = billed(kylon, agent, raw.headers["x-kylon-request-id"])
    # Web fetches cost only their tokens; searches $10 per 1,000.
    assert credits == reference(body, "anthropic")
    assert credits > reference({**body, "usage": {**body["usage"], "server_tool_use": {}}}, "anthropic")


def test_anthropic_web_searches_in_a_stream(kylon, agent_key):
    agent, key = agent_key
    usage = {"server_tool_use": {"web_search_requests": 4}}
    client = anthropic.Anthropic(base_url=kylon.url + "/proxy/anthropic", api_key=key, max_retries=0)
    with client.messages.with_streaming_response.create(
        model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_headers=fake_headers(usage=usage),
    ) as response:
        request_id = response.headers["x-kylon-request-id"]
        list(response.iter_lines())
    _, credits = billed(kylon, agent, request_id)
    body = {"model": "claude-sonnet-4-6", "usage": merged(anthropic_usage(), usage)}
    assert credits == reference(body, "anthropic")


def anthropic_usage():
    from .fakes import anthropic_fake

    return anthropic_fake.usage()


def test_anthropic_prompt_above_200k_tokens(kylon, agent_key):
    agent, key = agent_key
    raw, body = claude(kylon, key, usage={"input_tokens": 250_000})
    _, credits = billed(kylon, agent, raw.headers["x-kylon-request-id"])
    assert credits == reference(body, "anthropic")


# -- Gemini ------------------------------------------------------------------------

CLIENTS = []  # google-genai clients close their HTTP client when collected


def gemini(kylon, key, model, usage=None, candidate=None):
    client = genai.Client(api_key=key, http_options={"base_url": kylon.url + "/proxy/gemini"})
    CLIENTS.append(client)
    config = genai_types.GenerateContentConfig(
        http_options=genai_types.HttpOptions(headers=fake_headers(usage=usage, candidate=candidate)))
    answer = client.models.generate_content(model=model, contents="hi", config=config)
    body = {"modelVersion": model, "usageMetadata": merged(gemini_fake.usage_metadata(), usage or {})}
    return answer.sdk_http_response.headers["x-kylon-request-id"], body


def modality(**counts):
    return [{"modality": name.upper(), "tokenCount": n} for name, n in counts.items()]


@pytest.mark.parametrize("model", ["gemini-3.1-pro-preview", "gemini-2.5-pro"])
def test_gemini_prompt_above_200k_tokens(kylon, agent_key, model):
    agent, key = agent_key
    request_id, body = gemini(kylon, key, model, usage={"promptTokenCount": 250_000,
                                                        "promptTokensDetails": modality(text=250_000)})
    _, credits = billed(kylon, agent, request_id)
    assert credits == reference(body, "google")


def test_gemini_audio_and_cached_audio_input(kylon, agent_key):
    agent, key = agent_key
    usage = {"promptTokensDetails": modality(text=5, audio=6), "cacheTokensDetails": modality(audio=3)}
    request_id, body = gemini(kylon, key, "gemini-2.5-flash", usage=usage)
    _, credits = billed(kylon, agent, request_id)
    assert credits == reference(body, "google")


def test_gemini_image_output(kylon, agent_key):
    agent, key = agent_key
    usage = {"candidatesTokenCount": 1297, "candidatesTokensDetails": modality(text=7, image=1290)}
    request_id, body = gemini(kylon, key, "gemini-3-pro-image-preview", usage=usage)
    record, credits = billed(kylon, agent, request_id)
    assert credits == reference(body, "google")


def test_gemini_search_grounding(kylon, agent_key):
    agent, key = agent_key
    grounding = {"groundingMetadata": {"webSearchQueries": ["kylon", "credits", "gateway"]}}
    request_id, body = gemini(kylon, key, "gemini-3.1-pro-preview", candidate=grounding)
    _, credits = billed(kylon, agent, request_id)
    # genai-prices reads no grounding from an answer: the same usage with its three searches.
    assert credits == reference(body, "google", web_searches=3)
