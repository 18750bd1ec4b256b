"""Allowed models per agent and per key (docs/controls.md): a call for a model
the agent's or the key's list excludes is refused with 403 in the provider's
shape, naming the model and who restricts it, and nothing goes upstream;
model listings answer only what the key may call. Through the official SDKs,
on SQLite and on MariaDB (the `kylon` fixture)."""

import json
import time
from decimal import Decimal
from types import SimpleNamespace

import anthropic
import httpx
import openai
import pytest
from cerebras.cloud import sdk as cerebras
from google import genai
from google.genai import errors as genai_errors

from kylon.calls.admission import check_model, model_filter, model_matcher
from kylon.controls import Limits

from .conftest import CREATED_SECRETS
from .fakes import anthropic_fake, cerebras_fake, gemini_fake, openai_fake, openrouter_fake

MESSAGES = [{"role": "user", "content": "Say hi"}]
CLIENTS = []  # genai clients close their HTTP client when collected: keep them


# -- the matcher ------------------------------------------------------------------


def entry(*patterns):
    """A KeyEntry or AgentEntry as check_model reads it."""
    return SimpleNamespace(limits=Limits(models=tuple(patterns)))


def allowed(provider, model, *patterns):
    return check_model(provider, model, entry(*patterns), entry()) is None


def test_wildcards_match_as_fnmatch_does():
    assert allowed("openai", "gpt-5", "gpt-5*") and allowed("openai", "gpt-5-mini", "gpt-5*")
    assert not allowed("openai", "gpt-4o", "gpt-5*")
    assert allowed("anthropic", "claude-3-5-haiku-20241022", "claude-*-haiku-*")
    assert not allowed("anthropic", "claude-haiku-4-5-20251001", "claude-*-haiku-*")
    assert allowed("openai", "o3", "o?") and not allowed("openai", "o3-mini", "o?")
    assert allowed("openai", "o3", "o[34]") and not allowed("openai", "o1", "o[34]")
    # Case matters, and a pattern matches the whole name.
    assert not allowed("openai", "GPT-5", "gpt-5*") and not allowed("openai", "my-gpt-5", "gpt-5*")


def test_a_provider_prefix_limits_a_pattern_to_that_provider():
    assert allowed("openrouter", "moonshotai/kimi-k2", "openrouter:moonshotai/*")
    assert not allowed("openai", "moonshotai/kimi-k2", "openrouter:moonshotai/*")
    assert allowed("anthropic", "claude-sonnet-4-5", "anthropic:claude-*")
    assert not allowed("anthropic-vertex", "claude-sonnet-4-5@20250929", "anthropic:claude-*")
    assert allowed("anthropic-vertex", "claude-sonnet-4-5@20250929", "anthropic-vertex:claude-*")
    # Without a prefix, any provider; a wildcard does not reach across the prefix.
    assert allowed("openrouter", "openai/gpt-4o", "openai/*") and allowed("openai", "gpt-4o", "*")
    assert not allowed("openrouter", "moonshotai/kimi-k2", "o*")
    # A model's own colon (fine-tunes, OpenRouter's :free) is part of its name.
    assert allowed("openai", "ft:gpt-4o-mini:acme::abc123", "ft:gpt-4o-mini*")
    assert allowed("openrouter", "moonshotai/kimi-k2:free", "*:free")


def test_a_call_must_pass_the_agent_list_and_the_key_list():
    agent, key = entry("gpt-5*"), entry("gpt-5-mini", "gpt-4o")
    assert check_model("openai", "gpt-5-mini", key, agent) is None
    refused = check_model("openai", "gpt-4o", key, agent)
    assert refused.status == 403 and refused.reason == "model"
    assert "'gpt-4o'" in refused.message and "this agent" in refused.message and "gpt-5*" in refused.message
    refused = check_model("openai", "gpt-5", key, agent)
    assert "this key" in refused.message and "gpt-5-mini, gpt-4o" in refused.message
    # No list: any model; and a listing keeps what both lists allow.
    assert check_model("openai", "anything", entry(), entry()) is None
    assert model_filter("openai", entry(), entry()) is None
    keep = model_filter("openai", key, agent)
    assert [m for m in ("gpt-5", "gpt-5-mini", "gpt-4o") if keep(m)] == ["gpt-5-mini"]


def test_a_model_kylon_cannot_tell_is_refused_under_a_list():
    refused = check_model("openai", "", entry("gpt-5*"), entry())
    assert refused.status == 403 and "could not tell which model" in refused.message
    assert check_model("openai", "", entry(), entry()) is None


def test_patterns_are_compiled_once_per_list():
    patterns = ("gpt-5*", "o3")
    model_matcher("openai", patterns)
    hits = model_matcher.cache_info().hits
    for _ in range(3):
        check_model("openai", "gpt-5", entry(*patterns), entry())
    assert model_matcher.cache_info().hits == hits + 3


# -- helpers for the calls ------------------------------------------------------------


def agent_with_key(kylon, key_models=None, agent_models=None, skills=()):
    agent = kylon.create_agent("100", skills=skills)
    if agent_models is not None:
        r = kylon.admin("PATCH", f"/agents/{agent['id']}", json={"allowed_models": agent_models})
        assert r.status_code == 200, r.text
    extra = {} if key_models is None else {"allowed_models": key_models}
    key = kylon.create_key(agent["id"], **extra)
    CREATED_SECRETS.add(key["key"])
    return agent, key


def openai_client(kylon, key, provider="openai"):
    return openai.OpenAI(base_url=f"{kylon.url}/proxy/{provider}/v1", api_key=key, max_retries=0)


def anthropic_client(kylon, key):
    return anthropic.Anthropic(base_url=kylon.url + "/proxy/anthropic", api_key=key, max_retries=0)


def gemini_client(kylon, key):
    c = genai.Client(api_key=key, http_options={"base_url": kylon.url + "/proxy/gemini"})
    CLIENTS.append(c)
    return c


def cerebras_client(kylon, key):
    return cerebras.Cerebras(base_url=kylon.url + "/proxy/cerebras", api_key=key, max_retries=0,
                             warm_tcp_connection=False)


def received_at(fake, path_part):
    return [r for r in fake.received if path_part in r.path]


def assert_rejected_record(kylon, agent, count=1):
    records = kylon.usage_for_agent(agent["id"], count)
    assert all(r["status"] == "rejected" and r["http_status"] in (403, 404) for r in records), records
    assert all(Decimal(r["credits"]) == 0 for r in records)
    return records


def rejected_for_model(kylon, provider):
    """kylon_rejected_requests_total{provider, reason="model"} on /metrics."""
    text = httpx.get(kylon.url + "/metrics", timeout=10).text
    line = f'kylon_rejected_requests_total{{provider="{provider}",reason="model"}} '
    found = [ln for ln in text.splitlines() if ln.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


# -- calls refused and allowed --------------------------------------------------------------


def test_openai_chat_and_responses_for_a_model_not_allowed_get_403_and_nothing_goes_upstream(kylon, fakes):
    fake = fakes["openai"]
    agent, key = agent_with_key(kylon, key_models=["gpt-5*"])
    c = openai_client(kylon, key["key"])
    before, metric = len(fake.received), rejected_for_model(kylon, "openai")
    with pytest.raises(openai.PermissionDeniedError) as err:
        c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert "'gpt-4o-mini'" in err.value.message and "this key" in err.value.message and "gpt-5*" in err.value.message
    assert err.value.code == "model_not_allowed"
    with pytest.raises(openai.PermissionDeniedError) as err:
        c.responses.create(model="gpt-4o", input="Say hi")
    assert "'gpt-4o'" in err.value.message
    assert len(fake.received) == before
    records = assert_rejected_record(kylon, agent, 2)
    assert sorted(r["model"] for r in records) == ["gpt-4o", "gpt-4o-mini"]
    assert rejected_for_model(kylon, "openai") == metric + 2
    # An allowed model goes.
    completion = c.chat.completions.create(model="gpt-5-mini", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello from the fake upstream!"
    assert c.responses.create(model="gpt-5", input="Say hi").usage.input_tokens == openai_fake.PROMPT_TOKENS
    assert len(fake.received) == before + 2


def test_a_call_without_a_model_under_a_list_is_refused_and_says_why(kylon, fakes):
    agent, key = agent_with_key(kylon, key_models=["gpt-5*"])
    before = len(fakes["openai"].received)
    r = httpx.post(kylon.url + "/proxy/openai/v1/chat/completions", json={"messages": MESSAGES},
                   headers={"Authorization": f"Bearer {key['key']}"})
    assert r.status_code == 403 and "could not tell which model" in r.json()["error"]["message"]
    assert len(fakes["openai"].received) == before


def test_the_agent_list_and_the_key_list_both_apply(kylon, fakes):
    agent, key = agent_with_key(kylon, key_models=["gpt-5-mini", "gpt-4o"], agent_models=["gpt-5*"])
    c = openai_client(kylon, key["key"])
    assert c.chat.completions.create(model="gpt-5-mini", messages=MESSAGES).choices
    with pytest.raises(openai.PermissionDeniedError) as err:
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert "this agent" in err.value.message and "gpt-5*" in err.value.message
    with pytest.raises(openai.PermissionDeniedError) as err:
        c.chat.completions.create(model="gpt-5", messages=MESSAGES)
    assert "this key" in err.value.message
    # Another key of the agent, without a list of its own: the agent's list alone.
    other = kylon.create_key(agent["id"], "second")
    CREATED_SECRETS.add(other["key"])
    assert openai_client(kylon, other["key"]).chat.completions.create(model="gpt-5", messages=MESSAGES).choices


def test_provider_prefixed_patterns(kylon, fakes):
    agent, key = agent_with_key(kylon, agent_models=["openrouter:moonshotai/*", "anthropic:claude-*-haiku-*"])
    router = openai_client(kylon, key["key"], "openrouter")
    assert router.chat.completions.create(model="moonshotai/kimi-k2", messages=MESSAGES).choices
    with pytest.raises(openai.PermissionDeniedError) as err:
        router.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    assert "'openai/gpt-4o-mini'" in err.value.message and "openrouter:moonshotai/*" in err.value.message
    # The same names on another provider are not allowed.
    before = len(fakes["openai"].received)
    with pytest.raises(openai.PermissionDeniedError):
        openai_client(kylon, key["key"]).chat.completions.create(model="moonshotai/kimi-k2", messages=MESSAGES)
    assert len(fakes["openai"].received) == before
    claude = anthropic_client(kylon, key["key"])
    message = claude.messages.create(model="claude-3-5-haiku-20241022", max_tokens=50, messages=MESSAGES)
    assert message.usage.output_tokens > 0


def test_anthropic_refuses_a_model_not_allowed(kylon, fakes):
    fake = fakes["anthropic"]
    agent, key = agent_with_key(kylon, key_models=["claude-*-haiku-*"])
    c = anthropic_client(kylon, key["key"])
    before = len(fake.received)
    with pytest.raises(anthropic.PermissionDeniedError) as err:
        c.messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=MESSAGES)
    assert "'claude-sonnet-4-5'" in err.value.message and "claude-*-haiku-*" in err.value.message
    with pytest.raises(anthropic.PermissionDeniedError):
        c.messages.count_tokens(model="claude-sonnet-4-5", messages=MESSAGES)
    assert len(fake.received) == before
    assert c.messages.create(model="claude-3-haiku-20240307", max_tokens=50, messages=MESSAGES).content


def test_gemini_refuses_a_model_not_allowed_from_its_path(kylon, fakes):
    fake = fakes["gemini"]
    agent, key = agent_with_key(kylon, key_models=["gemini-2.5-flash*"])
    c = gemini_client(kylon, key["key"])
    before = len(fake.received)
    with pytest.raises(genai_errors.ClientError) as err:
        c.models.generate_content(model="gemini-2.5-pro", contents="Hi")
    assert err.value.code == 403 and "'gemini-2.5-pro'" in err.value.message
    with pytest.raises(genai_errors.ClientError) as err:
        list(c.models.generate_content_stream(model="models/gemini-2.0-flash", contents="Hi"))
    assert err.value.code == 403 and "'gemini-2.0-flash'" in err.value.message
    with pytest.raises(genai_errors.ClientError) as err:
        c.models.count_tokens(model="gemini-2.5-pro", contents="Hi")
    assert err.value.code == 403
    assert len(fake.received) == before
    assert_rejected_record(kylon, agent, 3)
    assert c.models.generate_content(model="gemini-2.5-flash", contents="Hi").text
    # Calls that name no model (files) are not the lists' business.
    assert list(c.files.list()) is not None


def test_the_gemini_helpers_and_openai_images_are_checked_with_the_model_they_use(kylon, fakes):
    agent, key = agent_with_key(kylon, key_models=["gemini-2.5-flash-lite", "gpt-image-1*"])
    before = len(fakes["gemini"].received) + len(fakes["openai"].received)
    inline = {"mime_type": "text/plain", "data": "aGk="}
    # The helper's default model (gemini-2.5-flash) when the request names none.
    r = httpx.post(kylon.url + "/proxy/gemini/file-understanding", headers={"x-goog-api-key": key["key"]},
                   json={"inline_data": inline, "prompt": "Hi"})
    assert r.status_code == 403 and "'gemini-2.5-flash'" in r.json()["error"]["message"]
    assert r.json()["error"]["status"] == "PERMISSION_DENIED"
    # OpenAI's default image model (dall-e-2) when the request names none.
    images = openai_client(kylon, key["key"]).images
    with pytest.raises(openai.PermissionDeniedError) as err:
        images.generate(prompt="A cat")
    assert "'dall-e-2'" in err.value.message
    assert len(fakes["gemini"].received) + len(fakes["openai"].received) == before
    r = httpx.post(kylon.url + "/proxy/gemini/file-understanding", headers={"x-goog-api-key": key["key"]},
                   json={"inline_data": inline, "prompt": "Hi", "model": "gemini-2.5-flash-lite"})
    assert r.status_code == 200, r.text
    assert images.generate(model="gpt-image-1", prompt="A cat").data


def test_cerebras_refuses_a_model_not_allowed(kylon, fakes):
    fake = fakes["cerebras"]
    agent, key = agent_with_key(kylon, key_models=["llama3.1-*"])
    c = cerebras_client(kylon, key["key"])
    before = len(fake.received)
    with pytest.raises(cerebras.PermissionDeniedError) as err:
        c.chat.completions.create(model="llama-3.3-70b", messages=MESSAGES)
    assert "'llama-3.3-70b'" in err.value.message
    assert len(fake.received) == before
    assert c.chat.completions.create(model="llama3.1-8b", messages=MESSAGES).choices


def test_elevenlabs_names_its_default_model_when_the_request_names_none(kylon, fakes):
    agent, key = agent_with_key(kylon, key_models=["eleven_flash_*"], skills=["elevenlabs"])
    before = len(fakes["elevenlabs"].received)
    url = kylon.url + "/proxy/elevenlabs/v1/text-to-speech/voice1"
    headers = {"xi-api-key": key["key"]}
    r = httpx.post(url, json={"text": "Hello"}, headers=headers)
    assert r.status_code == 403 and "'eleven_multilingual_v2'" in r.json()["detail"]["message"]
    assert len(fakes["elevenlabs"].received) == before
    r = httpx.post(url, json={"text": "Hello", "model_id": "eleven_flash_v2_5"}, headers=headers)
    assert r.status_code == 200


def test_a_change_of_the_key_list_applies_to_the_next_call(kylon, fakes):
    agent, key = agent_with_key(kylon)
    c = openai_client(kylon, key["key"])
    assert c.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices
    r = kylon.admin("PATCH", f"/keys/{key['id']}", json={"allowed_models": ["gpt-5*"]})
    assert r.status_code == 200, r.text
    with pytest.raises(openai.PermissionDeniedError):
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert [m.id for m in c.models.list()] == ["gpt-5", "gpt-5-mini"]
    kylon.admin("PATCH", f"/keys/{key['id']}", json={"allowed_models": []})
    assert c.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices


# -- model listings ----------------------------------------------------------------------


def ids(models):
    return [m["id"] for m in models]


def test_openai_listing_shows_what_the_key_may_call(kylon, fakes):
    agent, key = agent_with_key(kylon, key_models=["gpt-5*", "o3"])
    c = openai_client(kylon, key["key"])
    assert [m.id for m in c.models.list()] == ["gpt-5", "gpt-5-mini", "o3"]
    raw = c.models.with_raw_response.list()
    assert raw.http_request.url.path == "/proxy/openai/v1/models" and json.loads(raw.text)["object"] == "list"
    assert c.models.retrieve("gpt-5").owned_by == "system"
    before = len(fakes["openai"].received)
    with pytest.raises(openai.NotFoundError) as err:
        c.models.retrieve("gpt-4o")
    assert "'gpt-4o'" in err.value.message and err.value.code == "model_not_found"
    assert len(fakes["openai"].received) == before
    # No list: everything upstream has, as it came.
    _, free_key = agent_with_key(kylon)
    everything = openai_client(kylon, free_key["key"])
    assert [m.id for m in everything.models.list()] == ids(openai_fake.MODELS)
    assert everything.models.retrieve("gpt-4o").id == "gpt-4o"
    # Listings are free, and recorded.
    records = kylon.usage_for_agent(agent["id"], 4)
    assert {r["route"] for r in records} == {"models.list", "models.retrieve"}
    assert all(Decimal(r["credits"]) == 0 and r["estimated"] is False for r in records)
    assert sorted(r["status"] for r in records) == ["completed"] * 3 + ["rejected"]
    assert kylon.balance(agent["id"]) == Decimal("100")


def test_anthropic_listing_pages_through_what_the_key_may_call(kylon, fakes):
    _, key = agent_with_key(kylon, key_models=["claude-*-haiku-*", "claude-opus-*"])
    c = anthropic_client(kylon, key["key"])
    shown = [m.id for m in c.models.list(limit=2)]
    assert shown == ["claude-opus-4-1-20250805", "claude-3-5-haiku-20241022", "claude-3-haiku-20240307"]
    page = c.models.list(limit=2)
    assert page.first_id == shown[0] and page.last_id == shown[-1]
    assert c.models.retrieve("claude-3-haiku-20240307").display_name == "Claude Haiku 3"
    with pytest.raises(anthropic.NotFoundError):
        c.models.retrieve("claude-sonnet-4-5-20250929")
    # No list: the client's own pages, all of them.
    _, free_key = agent_with_key(kylon)
    before = len(fakes["anthropic"].received)
    assert [m.id for m in anthropic_client(kylon, free_key["key"]).models.list(limit=2)] == ids(anthropic_fake.MODELS)
    assert len(fakes["anthropic"].received) == before + 3


def test_gemini_listing_shows_what_the_key_may_call(kylon, fakes):
    _, key = agent_with_key(kylon, key_models=["gemini-2.5-*"])
    c = gemini_client(kylon, key["key"])
    names = [m.name for m in c.models.list(config={"page_size": 2})]
    assert names == ["models/gemini-2.5-flash", "models/gemini-2.5-pro", "models/gemini-2.5-flash-lite"]
    assert c.models.get(model="gemini-2.5-pro").display_name == "gemini-2.5-pro"
    before = len(fakes["gemini"].received)
    with pytest.raises(genai_errors.ClientError) as err:
        c.models.get(model="gemini-2.0-flash")
    assert err.value.code == 404
    assert len(fakes["gemini"].received) == before
    _, free_key = agent_with_key(kylon)
    everything = gemini_client(kylon, free_key["key"])
    assert [m.name for m in everything.models.list(config={"page_size": 2})] == [m["name"] for m in gemini_fake.MODELS]
    assert len(fakes["gemini"].received) == before + 3


def test_cerebras_and_openrouter_listings(kylon, fakes):
    _, key = agent_with_key(kylon, key_models=["llama*", "openrouter:moonshotai/*"])
    assert [m.id for m in cerebras_client(kylon, key["key"]).models.list().data] == ["llama3.1-8b", "llama-3.3-70b"]
    with pytest.raises(cerebras.NotFoundError):
        cerebras_client(kylon, key["key"]).models.retrieve("qwen-3-32b")
    router = openai_client(kylon, key["key"], "openrouter")
    assert [m.id for m in router.models.list()] == ["moonshotai/kimi-k2", "moonshotai/kimi-k2:free"]
    assert fakes["openrouter"].last().path == "/api/v1/models"
    _, free_key = agent_with_key(kylon)
    assert [m.id for m in cerebras_client(kylon, free_key["key"]).models.list().data] == ids(cerebras_fake.MODELS)
    assert [m.id for m in openai_client(kylon, free_key["key"], "openrouter").models.list()] == ids(
        openrouter_fake.MODELS)


def test_a_listing_needs_the_skill_a_provider_gate_asks_for(kylon, fakes):
    r = kylon.admin("PUT", "/gates", json={"provider": "cerebras", "route": "", "skill": "cerebras"})
    assert r.status_code == 200, r.text
    try:
        time.sleep(0.6)  # the gate reaches every process within the refresh bound
        _, key = agent_with_key(kylon)
        with pytest.raises(cerebras.PermissionDeniedError) as err:
            cerebras_client(kylon, key["key"]).models.list()
        assert "cerebras" in err.value.message
        _, skilled = agent_with_key(kylon, skills=["cerebras"])
        assert cerebras_client(kylon, skilled["key"]).models.list().data
    finally:
        kylon.admin("DELETE", f"/gates/{r.json()['id']}")
