"""Numbers parsed strictly (issue 15, point 4), on SQLite and MariaDB: credit
amounts are plain decimals of at most 9 decimal places, an agent never starts
in debt, and no input at all, to any proxy route or admin call, makes Kylon
answer with an error of its own 5xx (hypothesis-generated JSON bodies)."""

import re
import uuid
from decimal import Decimal

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kylon.providers import load_providers

from .conftest import drop_database, scratch_database_url
from .kylon_process import ADMIN_TOKEN, Kylon

# -- credit amounts -----------------------------------------------------------------

BAD_AMOUNTS = {
    "1E-30": "not a plain decimal",
    "0.000000000000000000000000000001": "more than 9 decimal places",
    "0.0000000001": "more than 9 decimal places",
    "1_000": "not a plain decimal",
    " 1 ": "not a plain decimal",
    "+1": "not a plain decimal",
    "NaN": "not a plain decimal",
    "Infinity": "not a plain decimal",
    "1e3": "not a plain decimal",
    "1000000000": "out of range",
}


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
def test_bad_amounts_are_400_naming_the_rule(kylon, agent_key, amount):
    agent, _ = agent_key
    answer = kylon.admin("POST", f"/agents/{agent['id']}/credits", json={"amount": amount})
    assert answer.status_code == 400 and BAD_AMOUNTS[amount] in answer.json()["error"]["message"]
    assert kylon.balance(agent["id"]) == 100


def test_the_smallest_amount_is_kept_exactly(kylon, agent_key):
    agent, _ = agent_key
    answer = kylon.admin("POST", f"/agents/{agent['id']}/credits", json={"amount": "0.000000001"})
    assert answer.status_code == 200 and Decimal(answer.json()["amount"]) == Decimal("0.000000001")
    assert kylon.balance(agent["id"]) == Decimal("100.000000001")
    assert kylon.admin("POST", f"/agents/{agent['id']}/credits", json={"amount": 1e-30}).status_code == 400


def test_an_agent_cannot_start_in_debt(kylon):
    answer = kylon.admin("POST", "/agents", json={"name": "in-debt", "credits": "-5"})
    assert answer.status_code == 400 and "must not be negative" in answer.json()["error"]["message"]
    assert kylon.admin("POST", "/agents", json={"name": "tiny", "credits": "1E-30"}).status_code == 400


# -- no input raises an internal error --------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def fuzzed(request, tmp_path_factory, upstream_env):
    """A Kylon of its own: the admin calls below change its prices and gates."""
    url = scratch_database_url(request.param, tmp_path_factory)
    instance = Kylon(url, upstream_env, name="fuzz-" + request.param)
    agent, key = instance.agent_with_key("1000", skills=["elevenlabs"])
    instance.agent, instance.key = agent, key
    yield instance
    instance.stop()
    drop_database(url)


def concrete_path(route):
    """A path a route's pattern matches (a model name where it takes one)."""
    path = route.path.replace("(?:beta|alpha)?", "beta").replace("[^/:]+", "gemini-2.5-flash")
    path = path.replace("[^/]+", "voice1").replace("(/with-timestamps)?", "")
    assert route.pattern.match(path), f"make a concrete path for {route.path}"
    return path


ROUTES = sorted(
    (name, concrete_path(route)) for name, provider in load_providers({}).items()
    for route in provider.routes if "POST" in route.methods
)
FIELDS = ["model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
          "max_output_tokens", "n", "input", "prompt", "size", "quality", "contents", "generationConfig",
          "maxOutputTokens", "candidateCount", "text", "model_id", "files", "file_uri", "name", "skills",
          "credits", "amount", "note", "expires_at", "provider", "route", "skill", "output", "per_unit",
          "cached_input", "role", "content", "system", "tools"]
NUMBERS = st.one_of(st.integers(), st.sampled_from([10**27, -1, 0, 2**63, 10**8 + 1, 1e308, 1e-30]),
                    st.floats(allow_nan=True, allow_infinity=True))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=20),
                    st.sampled_from(["gpt-4o-mini", "dall-e-2", "gemini-2.5-flash", "claude-sonnet-4-5",
                                     "eleven_multilingual_v2", "1E-30", "0.5", "-1", "openai", "/v1"]))
KEYS = st.one_of(st.sampled_from(FIELDS), st.text(max_size=8))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
                    max_leaves=12)
BODIES = st.dictionaries(KEYS, JSON, max_size=6)


def assert_not_kylons_own_failure(answer, reached):
    """A 5xx is Kylon's own when nothing reached an upstream (a fake may
    answer 5xx, relayed), and never an internal error."""
    assert "Internal error in Kylon" not in answer.text, answer.text
    if answer.status_code >= 500:
        assert reached, (answer.status_code, answer.text)


def log_has_no_traceback(kylon, before):
    assert "Traceback" not in kylon.read_log()[before:]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(ROUTES), body=BODIES)
def test_no_proxy_body_raises_an_internal_error(fuzzed, fakes, route, body):
    provider, path = route
    for fake in fakes.values():
        fake.reset()
    key = fuzzed.key
    headers = {"Authorization": f"Bearer {key}", "x-api-key": key, "x-goog-api-key": key, "xi-api-key": key,
               "Content-Type": "application/json"}
    start = len(fuzzed.read_log())
    answer = httpx.post(f"{fuzzed.url}/proxy/{provider}{path}", headers=headers, timeout=30,
                        content=httpx_json(body))
    reached = any(fake.received for fake in fakes.values())
    if provider == "anthropic-vertex" and answer.status_code == 503 and not reached:
        assert "not configured" in answer.text  # its configuration is the test's business elsewhere
        return
    assert_not_kylons_own_failure(answer, reached)
    log_has_no_traceback(fuzzed, start)


def httpx_json(value):
    import json

    return json.dumps(value).encode()  # NaN and Infinity as Python writes them


ADMIN_CALLS = [("POST", "/agents"), ("PATCH", "/agents/{id}"), ("POST", "/agents/{id}/credits"),
               ("POST", "/agents/{id}/keys"), ("PUT", "/prices"), ("PUT", "/gates"), ("GET", "/usage"),
               ("GET", "/agents/{id}"), ("DELETE", "/keys/{id}"), ("DELETE", "/gates/{id}")]
# Hypothesis favours small numbers: the large ones are named.
HUGE = [2**31, 2**63, 10**20, 10**30]
IDS = st.one_of(st.integers(0, 5), st.sampled_from(HUGE), st.integers(0, 10**30))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(call=st.sampled_from(ADMIN_CALLS), body=BODIES, some_id=IDS,
       query=st.dictionaries(st.sampled_from(["agent_id", "key_id", "limit", "offset", "since", "until", "status"]),
                             st.text(max_size=12) | st.sampled_from(HUGE + [-1]).map(str), max_size=3))
def test_no_admin_call_raises_an_internal_error(fuzzed, call, body, some_id, query):
    method, path = call
    start = len(fuzzed.read_log())
    if path == "/gates" and re.match(r"(openai|anthropic|gemini|elevenlabs|cerebras|openrouter)$",
                                     str(body.get("provider"))):
        body = {**body, "provider": "fuzz-" + uuid.uuid4().hex[:4]}  # the proxy test's routes stay open
    answer = httpx.request(method, fuzzed.url + "/admin/api" + path.format(id=some_id), params=query,
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
                           content=httpx_json(body) if method != "GET" else None, timeout=30)
    assert answer.status_code < 500, (answer.status_code, answer.text)
    log_has_no_traceback(fuzzed, start)
