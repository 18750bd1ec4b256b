"""Provider gates (SPEC §3) are data: the admin adds, changes and removes them
through `/admin/api/gates`, a change made by another process (straight in the
database) applies within the cache refresh bound, a route-prefix gate beats a
provider-wide one, and a refused call gets 403 in its provider's error shape
with nothing sent upstream."""

import re
import time

import httpx
import openai
import pytest
from playhouse.db_url import connect

from kylon.models import Gate
from kylon.providers import load_providers

from .conftest import CREATED_SECRETS

MESSAGES = [{"role": "user", "content": "Say hi"}]
# The test Kylon re-reads gates every 0.5 s (KYLON_CACHE_REFRESH_SECONDS).
REFRESH_BOUND = 0.5


def openai_client(kylon, key):
    return openai.OpenAI(base_url=kylon.url + "/proxy/openai/v1", api_key=key, max_retries=0)


def gate_rows(kylon):
    r = kylon.admin("GET", "/gates")
    assert r.status_code == 200, r.text
    return {(g["provider"], g["route"]): g for g in r.json()["data"]}


@pytest.fixture
def gates(kylon):
    """Set gates through the admin API; the gates as they were come back after the test."""
    before = gate_rows(kylon)

    def put(provider, route, skill):
        r = kylon.admin("PUT", "/gates", json={"provider": provider, "route": route, "skill": skill})
        assert r.status_code == 200, r.text
        return r.json()

    yield put
    after = gate_rows(kylon)
    for place, gate in after.items():
        if place not in before:
            kylon.admin("DELETE", f"/gates/{gate['id']}")
    for (provider, route), gate in before.items():
        if after.get((provider, route), {}).get("skill") != gate["skill"]:
            put(provider, route, gate["skill"])


def agent_key(kylon, skills=()):
    agent, key = kylon.agent_with_key("10", skills=skills)
    CREATED_SECRETS.add(key)
    return agent, key


def test_an_admin_gate_on_a_route_applies_at_once(kylon, fake_openai, gates):
    agent, key = agent_key(kylon)
    c = openai_client(kylon, key)
    gate = gates("openai", "/v1/responses", "responses")
    assert gate["skill"] == "responses" and gate["route"] == "/v1/responses"
    assert gate_rows(kylon)[("openai", "/v1/responses")]["id"] == gate["id"]

    fake_openai.reset()
    with pytest.raises(openai.PermissionDeniedError) as err:
        c.responses.create(model="gpt-4o-mini", input="Hi")
    assert "'responses'" in err.value.message and err.value.body["code"] == "missing_skill"
    assert fake_openai.received == []
    # The rest of the provider is not gated.
    assert c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices

    kylon.admin("PATCH", f"/agents/{agent['id']}", json={"skills": ["responses"]})
    assert c.responses.create(model="gpt-4o-mini", input="Hi").output_text


def test_a_route_gate_beats_the_provider_wide_gate(kylon, gates):
    gates("openai", "", "openai-all")
    gates("openai", "/v1/responses", "responses")
    _, responses_only = agent_key(kylon, ["responses"])
    _, openai_all = agent_key(kylon, ["openai-all"])

    assert openai_client(kylon, responses_only).responses.create(model="gpt-4o-mini", input="Hi").output_text
    with pytest.raises(openai.PermissionDeniedError) as err:
        openai_client(kylon, responses_only).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert "'openai-all'" in err.value.message

    assert openai_client(kylon, openai_all).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
    with pytest.raises(openai.PermissionDeniedError) as err:
        openai_client(kylon, openai_all).responses.create(model="gpt-4o-mini", input="Hi")
    assert "'responses'" in err.value.message


def test_changing_and_removing_a_gate(kylon, gates):
    _, key = agent_key(kylon, ["old-skill"])
    c = openai_client(kylon, key)
    gate = gates("openai", "/v1/chat/completions", "old-skill")
    assert c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
    # Setting the same place again replaces its skill.
    gates("openai", "/v1/chat/completions", "new-skill")
    assert [g["skill"] for g in gate_rows(kylon).values() if g["route"] == "/v1/chat/completions"] == ["new-skill"]
    with pytest.raises(openai.PermissionDeniedError) as err:
        c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert "'new-skill'" in err.value.message

    current = gate_rows(kylon)[("openai", "/v1/chat/completions")]
    r = kylon.admin("DELETE", f"/gates/{current['id']}")
    assert r.status_code == 204, r.text
    assert ("openai", "/v1/chat/completions") not in gate_rows(kylon)
    assert c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
    assert kylon.admin("DELETE", f"/gates/{gate['id']}").status_code == 404


def test_bad_gates_are_refused(kylon):
    for body in ({"provider": "openai"}, {"skill": "x"}, {"provider": "openai", "skill": " "},
                 {"provider": "openai", "route": "v1/responses", "skill": "x"},
                 {"provider": "openai", "route": 7, "skill": "x"}):
        r = kylon.admin("PUT", "/gates", json=body)
        assert r.status_code == 400, body


def test_a_gate_written_by_another_process_applies_within_the_refresh_bound(kylon, gates):
    """Another Kylon (or an operator's script) changes the database directly."""
    _, key = agent_key(kylon)
    c = openai_client(kylon, key)
    assert c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
    db = connect(kylon.database_url)
    try:
        with db.bind_ctx([Gate]):
            gate = Gate.create(provider="openai", route="/v1/chat/completions", skill="db-skill")
        written = time.monotonic()
        waited = poll_until(lambda: status_of_chat(kylon, key) == 403)
        assert waited - written < REFRESH_BOUND + 1.0

        with db.bind_ctx([Gate]):
            Gate.delete().where(Gate.id == gate.id).execute()
        removed = time.monotonic()
        waited = poll_until(lambda: status_of_chat(kylon, key) == 200)
        assert waited - removed < REFRESH_BOUND + 1.0
    finally:
        with db.bind_ctx([Gate]):
            Gate.delete().where(Gate.skill == "db-skill").execute()
        db.close()


def status_of_chat(kylon, key):
    r = httpx.post(kylon.url + "/proxy/openai/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": "gpt-4o-mini", "messages": MESSAGES})
    return r.status_code


def poll_until(condition, timeout=5.0):
    """The time at which `condition` first held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError("the change never applied")


# What a refused call looks like in each provider's own error shape.
SHAPES = {
    "openai": lambda b: b["error"]["code"] == "missing_skill" and b["error"]["type"] == "permission_error",
    "anthropic": lambda b: b["type"] == "error" and b["error"]["type"] == "permission_error",
    "gemini": lambda b: b["error"]["code"] == 403 and b["error"]["status"] == "PERMISSION_DENIED",
    "elevenlabs": lambda b: b["detail"]["status"] == "missing_skill",
}
# The shape each provider's SDK expects (OpenAI's unless named here).
SHAPE_OF = {"anthropic": "anthropic", "anthropic-vertex": "anthropic", "gemini": "gemini", "elevenlabs": "elevenlabs"}


def message_of(body):
    if "detail" in body:
        return body["detail"]["message"]
    return body["error"]["message"]


def a_call(provider):
    """(method, path) of a call the provider serves: a literal route, or any
    path on a pass-through provider."""
    for route in provider.routes:
        if re.fullmatch(r"[\w/.-]+", route.path):
            return route.methods[0], route.path
    assert provider.passthrough, f"no literal route to call on {provider.name}"
    return "POST", "/v1/gate-check"


def test_the_403_comes_in_each_providers_error_shape(kylon, fakes, gates):
    configured = {p["name"] for p in kylon.admin("GET", "/providers").json()["data"] if p["configured"]}
    providers = [p for name, p in load_providers({}).items() if name in configured]
    assert {"openai", "elevenlabs"} <= {p.name for p in providers}
    _, key = agent_key(kylon, ["openai", "elevenlabs"])
    sent_upstream = sum(len(f.received) for f in fakes.values())
    for provider in providers:
        method, path = a_call(provider)
        gates(provider.name, path, "gate-check")
        header = provider.client_key_headers[0]
        value = f"Bearer {key}" if header == "authorization" else key
        r = httpx.request(method, f"{kylon.url}/proxy/{provider.name}{path}", headers={header: value},
                          json={"model": "m", "messages": MESSAGES})
        assert r.status_code == 403, (provider.name, r.text)
        body = r.json()
        assert SHAPES[SHAPE_OF.get(provider.name, "openai")](body), (provider.name, body)
        assert "'gate-check'" in message_of(body)
        assert r.headers["x-kylon-request-id"].startswith("req_")
    assert sum(len(f.received) for f in fakes.values()) == sent_upstream
