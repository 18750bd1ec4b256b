"""The ways around the meter (issue 12) are closed by shipped gates: paths
that mint a credential or a signed URL for the operator's account, and routes
Kylon cannot bill, answer 403 in the provider's shape with nothing sent
upstream until the operator grants the reserved skill. Shipped gates reach an
existing database once (docs/gates.md)."""

import types
from decimal import Decimal

import httpx
import openai
import pytest
from elevenlabs import ElevenLabs
from elevenlabs.core.api_error import ApiError
from google import genai
from google.genai import errors as genai_errors
from playhouse.db_url import connect

from kylon.gates import CREDENTIALS, UNMETERED, seed_gates
from kylon.models import Agent, Gate, Setting, UsageRecord, open_database
from kylon.providers import load_providers

from .conftest import CREATED_SECRETS, drop_database, scratch_database_url


def elevenlabs(kylon, key):
    return ElevenLabs(base_url=kylon.url + "/proxy/elevenlabs", api_key=key, timeout=10)


def gemini(kylon, key):
    return genai.Client(api_key=key, http_options={"base_url": kylon.url + "/proxy/gemini"})


# Each minting call through the official SDK (or, for a second spelling, plain HTTP).
# ElevenLabs' get-signed-url is Kylon's own now, leading back to Kylon
# (tests/test_elevenlabs_realtime.py).
MINTING = {
    "elevenlabs single-use token": ("elevenlabs", lambda k, key: elevenlabs(k, key).tokens.single_use.create(
        "realtime_scribe").token),
    "elevenlabs webrtc token": ("elevenlabs", lambda k, key: elevenlabs(k, key).conversational_ai.conversations
                                .get_webrtc_token(agent_id="agent_1").token),
    "gemini auth token": ("gemini", lambda k, key: gemini_auth_token(gemini(k, key))),
    "gemini auth token, encoded": ("gemini", lambda k, key: plain(
        k, key, "POST", "/proxy/gemini/v1alpha/auth%5Ftokens", "x-goog-api-key")),
}
def gemini_auth_token(client):
    # The client must outlive the call (a dropped one closes its connections).
    return client.auth_tokens.create(config={"uses": 1}).name


REFUSED = (ApiError, genai_errors.ClientError, httpx.HTTPStatusError)


def plain(kylon, key, method, path, header):
    r = httpx.request(method, kylon.url + path, headers={header: key}, json={} if method == "POST" else None)
    r.raise_for_status()
    return r.json()


def status_and_message(error):
    if isinstance(error, ApiError):
        return error.status_code, error.body["detail"]["message"]
    if isinstance(error, genai_errors.ClientError):
        return error.code, error.message
    body = error.response.json()
    return error.response.status_code, (body.get("detail") or body.get("error"))["message"]


@pytest.mark.parametrize("name", list(MINTING))
def test_a_minting_path_is_closed_until_the_operator_grants_the_skill(kylon, fakes, name):
    provider, mint = MINTING[name]
    fake = fakes[provider]
    agent, key = kylon.agent_with_key("10", skills=["elevenlabs"])
    CREATED_SECRETS.add(key)
    fake.reset()
    with pytest.raises(REFUSED) as refused:
        mint(kylon, key)
    status, message = status_and_message(refused.value)
    assert status == 403 and f"'{CREDENTIALS}'" in message and "bypass Kylon's metering" in message
    assert fake.received == []

    kylon.admin("PATCH", f"/agents/{agent['id']}", json={"skills": ["elevenlabs", CREDENTIALS]})
    assert mint(kylon, key)
    assert len(fake.received) == 1 and "pak_" not in fake.received[0].everything()


UNMETERED_CALLS = [
    ("gemini", "POST", "/v1beta/models/imagen-4.0-generate-001:predict", "x-goog-api-key"),
    ("gemini", "POST", "/v1beta/models/veo-3.0-generate-001:predictLongRunning", "x-goog-api-key"),
    ("gemini", "POST", "/v1beta/models/gemini-2.5-flash:batchGenerateContent", "x-goog-api-key"),
    ("gemini", "POST", "/v1beta/cachedContents", "x-goog-api-key"),
    ("elevenlabs", "POST", "/v1/speech-to-text", "xi-api-key"),
    ("elevenlabs", "POST", "/v1/sound-generation", "xi-api-key"),
    ("elevenlabs", "POST", "/v1/music", "xi-api-key"),
    ("elevenlabs", "POST", "/v1/dubbing", "xi-api-key"),
]


def test_unmetered_routes_are_closed_until_opened(kylon, fakes):
    agent, key = kylon.agent_with_key("10", skills=["elevenlabs"])
    CREATED_SECRETS.add(key)
    for provider, method, path, header in UNMETERED_CALLS:
        fakes[provider].reset()
        r = httpx.request(method, f"{kylon.url}/proxy/{provider}{path}", headers={header: key}, json={})
        assert r.status_code == 403, (path, r.text)
        body = r.json()
        message = (body.get("detail") or body.get("error"))["message"]
        assert "not metered by Kylon" in message and f"'{UNMETERED}'" in message, path
        assert fakes[provider].received == [], path

    kylon.admin("PATCH", f"/agents/{agent['id']}", json={"skills": ["elevenlabs", UNMETERED]})
    for provider, method, path, header in UNMETERED_CALLS:
        r = httpx.request(method, f"{kylon.url}/proxy/{provider}{path}", headers={header: key}, json={})
        # Through to the fake, which knows few of these paths (its 404 is Tornado's page, not Kylon's JSON).
        assert r.status_code != 403 and "kylon" not in r.text.lower(), (path, r.text)


def test_metered_neighbours_stay_open(kylon, fakes):
    """The gates name the closed calls only: generateContent and files are not theirs."""
    _, key = kylon.agent_with_key("10")
    CREATED_SECRETS.add(key)
    c = gemini(kylon, key)
    assert c.models.generate_content(model="gemini-2.5-flash", contents="Hi").text
    assert list(c.files.list()) is not None


def test_openai_realtime_secrets_are_not_served(kylon, fake_openai):
    """OpenAI has no pass-through: its credential-minting paths are unknown routes."""
    _, key = kylon.agent_with_key("10")
    CREATED_SECRETS.add(key)
    fake_openai.reset()
    for path in ("/v1/realtime/client_secrets", "/v1/realtime/sessions", "/v1/realtime/transcription_sessions"):
        r = httpx.post(f"{kylon.url}/proxy/openai{path}", headers={"Authorization": f"Bearer {key}"}, json={})
        assert r.status_code == 404, (path, r.text)
    assert fake_openai.received == []


# -- shipped gates into existing databases ------------------------------------------


def stub(name, default_gates, retired_gates=None):
    return types.SimpleNamespace(name=name, default_gates=default_gates, retired_gates=retired_gates or {})


def places():
    return {(g.provider, g.route): g.skill for g in Gate.select()}


@pytest.mark.parametrize("kind", ["sqlite", "mariadb"])
def test_shipped_gates_reach_an_existing_database_once(kind, tmp_path_factory):
    url = scratch_database_url(kind, tmp_path_factory)
    db = open_database(url)
    try:
        # A database seeded by the first release, whose operator then deleted
        # the elevenlabs gate and set one of their own.
        Setting.create(name="gates_seeded", value="1")
        Gate.create(provider="gemini", route="/*/auth_tokens", skill="operators-choice")
        providers = load_providers({})
        seed_gates(providers)
        gates = places()
        assert ("elevenlabs", "") not in gates  # deleted before: not resurrected
        assert gates[("gemini", "/*/auth_tokens")] == "operators-choice"  # operator data wins
        assert gates[("elevenlabs", "/v1/single-use-token")] == CREDENTIALS
        assert gates[("gemini", "/*/models/*:predict")] == UNMETERED

        # Deleted after this seeding: stays deleted at the next start.
        Gate.delete().where(Gate.route == "/v1/single-use-token").execute()
        seed_gates(providers)
        assert ("elevenlabs", "/v1/single-use-token") not in places()
        assert places() == {k: v for k, v in gates.items() if k[1] != "/v1/single-use-token"}

        # A later release ships one gate more and takes one back.
        later = dict(providers)
        later["extra"] = stub("extra", {"/v1/mint": CREDENTIALS})
        later["gemini"] = stub("gemini", providers["gemini"].default_gates, {"/*/models/*:predict": UNMETERED})
        seed_gates(later)
        assert places()[("extra", "/v1/mint")] == CREDENTIALS
        assert ("gemini", "/*/models/*:predict") not in places()
        # Taken back once: an operator who sets it again keeps it.
        Gate.create(provider="gemini", route="/*/models/*:predict", skill=UNMETERED)
        seed_gates(later)
        assert places()[("gemini", "/*/models/*:predict")] == UNMETERED
    finally:
        db.close()
        drop_database(url)


def test_the_signed_url_gates_shipped_before_are_taken_back(tmp_path_factory):
    """get-signed-url is Kylon's own now (a URL back to Kylon): a database seeded
    with its operator:credentials gates loses them; /v1/convai still closes it."""
    url = scratch_database_url("sqlite", tmp_path_factory)
    db = open_database(url)
    try:
        providers = load_providers({})
        before = stub("elevenlabs", {**providers["elevenlabs"].default_gates,
                                     "/v1/convai/conversation/get-signed-url": CREDENTIALS,
                                     "/v1/convai/conversation/get_signed_url": CREDENTIALS})
        seed_gates({**providers, "elevenlabs": before})
        assert places()[("elevenlabs", "/v1/convai/conversation/get-signed-url")] == CREDENTIALS
        seed_gates(providers)
        gates = places()
        assert ("elevenlabs", "/v1/convai/conversation/get-signed-url") not in gates
        assert ("elevenlabs", "/v1/convai/conversation/get_signed_url") not in gates
        assert gates[("elevenlabs", "/v1/convai")] == UNMETERED
        assert gates[("elevenlabs", "/v1/convai/conversation/token")] == CREDENTIALS
    finally:
        db.close()


def test_a_new_database_gets_every_shipped_gate(tmp_path_factory):
    url = scratch_database_url("sqlite", tmp_path_factory)
    db = open_database(url)
    try:
        providers = load_providers({})
        seed_gates(providers)
        shipped = {(p.name, r): s for p in providers.values() for r, s in p.default_gates.items()}
        assert places() == shipped and ("elevenlabs", "") in shipped
    finally:
        db.close()


# -- read-your-writes: admin reads include debits not yet committed --------------------


@pytest.mark.parametrize("kind", ["sqlite", "mariadb"])
def test_an_answered_call_is_in_the_balance_the_admin_reads_at_once(kind, make_kylon, tmp_path_factory):
    url = scratch_database_url(kind, tmp_path_factory)
    # Batches written every 30 s: the debit is surely not committed when read.
    kylon = make_kylon({"KYLON_USAGE_FLUSH_SECONDS": "30"}, database_url=url)
    try:
        agent, key = kylon.agent_with_key("100")
        CREATED_SECRETS.add(key)
        c = openai.OpenAI(base_url=kylon.url + "/proxy/openai/v1", api_key=key, max_retries=0)
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
        shown = kylon.balance(agent["id"])
        listed = {a["id"]: a for a in kylon.admin("GET", "/agents").json()["data"]}[agent["id"]]
        assert kylon.admin("GET", "/usage", params={"agent_id": agent["id"]}).json()["data"] == []
        assert shown < Decimal("100") and Decimal(listed["credits"]) == shown
        granted = kylon.admin("POST", f"/agents/{agent['id']}/credits", json={"amount": "1"}).json()
        assert Decimal(granted["credits"]) == shown + 1
        kylon.stop()  # writes every record
        db = connect(url)
        with db.bind_ctx([Agent, UsageRecord]):
            assert Agent.get_by_id(agent["id"]).credits == shown + 1
            (record,) = UsageRecord.select().where(UsageRecord.agent_id == agent["id"])
            assert Decimal("100") - record.credits == shown
        db.close()
    finally:
        kylon.stop()
        drop_database(url)
