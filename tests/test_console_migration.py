"""Schema 3 (the admin console): a version 2 database with agents sharing a
name and usage records is upgraded: later duplicates are renamed, names become
unique, and the rollups are summed from the records already there."""

import pytest
from playhouse.migrate import MySQLMigrator, SqliteMigrator, migrate

from kylon import admin, admin_reports
from kylon.models import SCHEMA_VERSION, Agent, Setting, UsageRollup, open_database

from .conftest import drop_database, scratch_database_url


def make_version_2_database(url):
    db = open_database(url)
    try:
        migrator = MySQLMigrator(db) if url.startswith("mysql") else SqliteMigrator(db)
        migrate(migrator.drop_index("agent", "agent_name"))
        db.drop_tables([UsageRollup])
        Setting.update(value="2").where(Setting.name == "schema_version").execute()
        for name in ("twin", "Twin", "twin", "solo"):
            Agent.create(name=name, credits=1)
        db.execute_sql(
            "INSERT INTO usagerecord (request_id, agent_id, provider, route, model, stream, status, input_tokens, "
            "cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, unit, units, credits, "
            "estimated, fallback_price, error, upstream_request_id, started_at, duration_ms) VALUES "
            "('req_v2', 1, 'openai', 'chat.completions', 'gpt-4o-mini', 0, 'completed', 5, 0, 0, 7, 0, '', 0, "
            "1234, 0, 0, '', '', '2025-01-01 10:20:30', 10)"
        )
    finally:
        db.close()


@pytest.mark.parametrize("kind", ["sqlite", "mariadb"])
def test_version_2_database_gets_unique_names_and_rollups(kind, tmp_path_factory):
    url = scratch_database_url(kind, tmp_path_factory)
    try:
        make_version_2_database(url)
        db = open_database(url)
        try:
            assert Setting.get(Setting.name == "schema_version").value == str(SCHEMA_VERSION)
            names = [a.name for a in Agent.select().order_by(Agent.id)]
            assert names == ["twin", "Twin #2", "twin #3", "solo"]
            with pytest.raises(admin.AdminError) as duplicate:
                admin.create_agent("SOLO")
            assert duplicate.value.status == 409
            day = {"agent_id": "1", "since": "2025-01-01T00:00", "until": "2025-01-02T00:00"}
            assert admin_reports.usage_totals(day) == {
                "requests": 1, "input_tokens": 5, "output_tokens": 7, "credits": "0.000001234"
            }
            assert admin_reports.usage_totals({**day, "since": "2025-01-01T10:00"})["requests"] == 1
        finally:
            db.close()
    finally:
        drop_database(url)
