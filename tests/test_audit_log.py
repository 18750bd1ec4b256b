"""The audit log through the admin API (GET /admin/api/audit): every admin
change recorded in its own transaction, with who made it and each changed
field as [before, after]; reads leave no entry."""

import uuid

from .kylon_process import ADMIN_TOKEN


def entries(kylon, **params):
    r = kylon.admin("GET", "/audit", params=params)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def labelled(kylon, label, method, path, **kwargs):
    """An admin API call naming its caller in X-Kylon-Admin-Label."""
    import httpx

    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Kylon-Admin-Label": label}
    return httpx.request(method, kylon.url + "/admin/api" + path, headers=headers, timeout=10, **kwargs)


def test_agent_creation_and_credits_are_audited(kylon):
    agent = kylon.create_agent("10")
    r = kylon.admin("POST", f"/agents/{agent['id']}/credits", json={"amount": "2.5", "note": "top-up"})
    assert r.status_code == 200, r.text
    kylon.admin("POST", f"/agents/{agent['id']}/credits", json={"amount": "-1"})
    kylon.admin("GET", f"/agents/{agent['id']}")  # a read: no entry
    adjust, top_up, created = entries(kylon, subject="agent", subject_id=agent["id"])
    assert created["action"] == "agent.create" and created["actor"] == "admin api"
    assert created["changes"]["name"] == [None, agent["name"]]
    assert created["changes"]["credits"] == [None, agent["credits"]]
    assert set(created["changes"]) == {"name", "credits"}  # only what was given a value
    assert top_up["action"] == "credits.adjust"
    assert top_up["changes"] == {"credits": ["10.000000000", "12.500000000"], "note": [None, "top-up"]}
    assert adjust["changes"] == {"credits": ["12.500000000", "11.500000000"]}
    assert adjust["created_at"].endswith("Z") and adjust["id"] > top_up["id"] > created["id"]


def test_revoking_a_key_is_audited_once(kylon):
    agent = kylon.create_agent("1")
    key = kylon.create_key(agent["id"], name="to revoke")
    for _ in range(2):  # revoking a revoked key changes nothing
        assert kylon.admin("DELETE", f"/keys/{key['id']}").status_code == 200
    revoked, created = entries(kylon, subject="key", subject_id=key["id"])
    assert created["action"] == "key.create" and revoked["action"] == "key.revoke"
    assert created["changes"] == {"agent_id": [None, agent["id"]], "name": [None, "to revoke"],
                                  "prefix": [None, key["prefix"]], "limit_reset": [None, "none"]}
    before, after = revoked["changes"]["revoked_at"]
    assert before is None and after == kylon.admin("GET", f"/keys/{key['id']}").json()["revoked_at"]


def test_price_overrides_are_audited(kylon):
    model = f"audited-model-{uuid.uuid4().hex[:6]}"
    subject = {"subject": "price", "subject_id": f"openai/{model}"}
    price = {"provider": "openai", "model": model, "input": "2", "output": "4", "per_unit": "0"}
    assert kylon.admin("PUT", "/prices", json=price).status_code == 200
    assert kylon.admin("PUT", "/prices", json=price).status_code == 200  # the same: no entry
    assert kylon.admin("PUT", "/prices", json={**price, "output": "5.5"}).status_code == 200
    assert kylon.admin("DELETE", "/prices", params={"provider": "openai", "model": model}).status_code == 204
    assert kylon.admin("DELETE", "/prices", params={"provider": "openai", "model": model}).status_code == 204
    deleted, changed, created = entries(kylon, **subject)
    assert created["action"] == "price.set"
    assert created["changes"] == {"input": [None, "2.000000000"], "output": [None, "4.000000000"],
                                  "per_unit": [None, "0.000000000"]}
    assert changed["changes"] == {"output": ["4.000000000", "5.500000000"]}
    assert deleted["action"] == "price.delete"
    assert deleted["changes"] == {"input": ["2.000000000", None], "output": ["5.500000000", None],
                                  "per_unit": ["0.000000000", None]}


def test_gates_are_audited_with_the_callers_label(kylon):
    route = f"/v1/audited-{uuid.uuid4().hex[:6]}"
    gate = {"provider": "openai", "route": route, "skill": "first"}
    assert labelled(kylon, "deploy-bot", "PUT", "/gates", json=gate).status_code == 200
    r = labelled(kylon, "ops \t script", "PUT", "/gates", json={**gate, "skill": "second"})
    assert r.status_code == 200
    assert kylon.admin("DELETE", f"/gates/{r.json()['id']}").status_code == 204
    deleted, changed, created = entries(kylon, subject="gate", subject_id="openai" + route)
    assert (created["action"], created["actor"], created["changes"]) == (
        "gate.set", "deploy-bot (admin api)", {"skill": [None, "first"]})
    # The label as the log shows it: printable, its spaces squeezed.
    assert (changed["actor"], changed["changes"]) == ("ops script (admin api)", {"skill": ["first", "second"]})
    assert (deleted["action"], deleted["actor"], deleted["changes"]) == (
        "gate.delete", "admin api", {"skill": ["second", None]})
    assert [e["id"] for e in entries(kylon, actor="deploy-bot (admin api)", subject="gate")][:1] == [created["id"]]


def test_audit_pages_back_with_before_id(kylon):
    agent = kylon.create_agent("1")
    for n in range(3):
        kylon.admin("PATCH", f"/agents/{agent['id']}", json={"rpm_limit": 10 + n})
    newest = entries(kylon, subject="agent", subject_id=agent["id"], limit=2)
    assert [e["changes"]["rpm_limit"][1] for e in newest] == [12, 11]
    older = entries(kylon, subject="agent", subject_id=agent["id"], limit=2, before_id=newest[-1]["id"])
    assert [e["action"] for e in older] == ["agent.update", "agent.create"]
    assert older[0]["changes"] == {"rpm_limit": [None, 10]}
