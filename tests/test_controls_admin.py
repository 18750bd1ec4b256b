"""The operator's controls on agents and keys through the admin API: set at
creation or later, checked, shown back, audited; and the schema step that
adds them to an older database."""

import pytest
from playhouse.migrate import MySQLMigrator, SqliteMigrator, migrate

from kylon.models import SCHEMA_VERSION, Setting, open_database

from .conftest import drop_database, scratch_database_url


def test_key_controls_set_at_creation_and_changed_later(kylon):
    agent = kylon.create_agent("10")
    key = kylon.create_key(agent["id"], credit_limit="2.5", limit_reset="daily", rpm_limit=60,
                           allowed_models=["gpt-5*", "claude-*-haiku-*"])
    assert key["credit_limit"] == "2.500000000" and key["limit_reset"] == "daily"
    assert key["rpm_limit"] == 60 and key["tpm_limit"] is None and key["concurrency_limit"] is None
    assert key["allowed_models"] == ["claude-*-haiku-*", "gpt-5*"]
    r = kylon.admin("PATCH", f"/keys/{key['id']}", json={"credit_limit": None, "limit_reset": "monthly",
                                                         "tpm_limit": "1000", "allowed_models": "gpt-4o*, o3"})
    assert r.status_code == 200, r.text
    shown = kylon.admin("GET", f"/keys/{key['id']}").json()
    assert shown["credit_limit"] is None and shown["limit_reset"] == "monthly" and shown["tpm_limit"] == 1000
    assert shown["rpm_limit"] == 60 and shown["allowed_models"] == ["gpt-4o*", "o3"]
    assert "key" not in shown and "key_hash" not in shown


def test_agent_controls(kylon):
    agent = kylon.create_agent("10")
    r = kylon.admin("PATCH", f"/agents/{agent['id']}", json={
        "rpm_limit": 100, "concurrency_limit": 4, "allowed_models": ["openrouter:moonshotai/*"],
        "alert_thresholds": ["20%", "5%", "0"]})
    assert r.status_code == 200, r.text
    shown = kylon.admin("GET", f"/agents/{agent['id']}").json()
    assert shown["rpm_limit"] == 100 and shown["concurrency_limit"] == 4 and shown["tpm_limit"] is None
    assert shown["allowed_models"] == ["openrouter:moonshotai/*"]
    assert shown["alert_thresholds"] == ["20%", "5%", "0"]
    # Fields not sent stay as they were.
    kylon.admin("PATCH", f"/agents/{agent['id']}", json={"name": agent["name"] + "-renamed"})
    assert kylon.admin("GET", f"/agents/{agent['id']}").json()["rpm_limit"] == 100


@pytest.mark.parametrize("body, message", [
    ({"rpm_limit": 0}, "'rpm_limit' must be a whole number"),
    ({"tpm_limit": -5}, "'tpm_limit' must be a whole number"),
    ({"concurrency_limit": 1.5}, "'concurrency_limit' must be a whole number"),
    ({"rpm_limit": True}, "'rpm_limit' must be a whole number"),
    ({"limit_reset": "hourly"}, "'limit_reset' must be one of none, daily, weekly, monthly"),
    ({"credit_limit": "-1"}, "'credit_limit' must not be negative"),
    ({"credit_limit": "1e3"}, "'credit_limit' is not a plain decimal"),
    ({"allowed_models": ["gpt 5"]}, "Not a model pattern"),
    ({"allowed_models": ["gpt;drop"]}, "Not a model pattern"),
    ({"allowed_models": {"a": 1}}, "must be a list of model patterns"),
])
def test_bad_key_controls_are_refused(kylon, body, message):
    agent = kylon.create_agent("1")
    r = kylon.admin("POST", f"/agents/{agent['id']}/keys", json={"name": "k", **body})
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


def test_bad_alert_thresholds_are_refused(kylon):
    agent = kylon.create_agent("1")
    for bad in (["120%"], ["five"], [None]):
        r = kylon.admin("PATCH", f"/agents/{agent['id']}", json={"alert_thresholds": bad})
        assert r.status_code == 400, (bad, r.text)


def test_changes_are_audited(kylon):
    agent = kylon.create_agent("1")
    key = kylon.create_key(agent["id"], name="audited")
    kylon.admin("PATCH", f"/keys/{key['id']}", json={"rpm_limit": 7})
    kylon.admin("PATCH", f"/keys/{key['id']}", json={"rpm_limit": 7})  # no change: no entry
    kylon.admin("PATCH", f"/agents/{agent['id']}", json={"tpm_limit": 500})
    entries = kylon.admin("GET", "/audit", params={"subject": "key", "subject_id": key["id"]}).json()["data"]
    assert [e["action"] for e in entries] == ["key.update", "key.create"]  # newest first
    assert entries[0]["actor"] == "admin api" and entries[0]["changes"] == {"rpm_limit": [None, 7]}
    entries = kylon.admin("GET", "/audit", params={"subject": "agent", "subject_id": agent["id"]}).json()["data"]
    assert [e["action"] for e in entries] == ["agent.update", "agent.create"]
    assert entries[0]["changes"] == {"tpm_limit": [None, 500]}
    assert kylon.admin("GET", "/audit", params={"limit": "0"}).status_code == 400


@pytest.mark.parametrize("kind", ["sqlite", "mariadb"])
def test_version_3_database_gets_the_controls(kind, tmp_path_factory):
    url = scratch_database_url(kind, tmp_path_factory)
    try:
        db = open_database(url)
        try:
            migrator = MySQLMigrator(db) if url.startswith("mysql") else SqliteMigrator(db)
            migrate(*[migrator.drop_column("agent", c) for c in
                      ("rpm_limit", "tpm_limit", "concurrency_limit", "allowed_models", "alert_thresholds")])
            migrate(*[migrator.drop_column("apikey", c) for c in
                      ("rpm_limit", "tpm_limit", "concurrency_limit", "allowed_models", "credit_limit",
                       "limit_reset")])
            Setting.update(value="3").where(Setting.name == "schema_version").execute()
        finally:
            db.close()
        db = open_database(url)
        try:
            assert Setting.get(Setting.name == "schema_version").value == str(SCHEMA_VERSION)
            columns = {c.name for c in db.get_columns("apikey")}
            assert {"credit_limit", "limit_reset", "rpm_limit", "allowed_models"} <= columns
            assert "alert_thresholds" in {c.name for c in db.get_columns("agent")}
        finally:
            db.close()
    finally:
        drop_database(url)
